# The two commands: `make demo` (set up, then run the whole loop) and `make test` (set up, then lint, type-check, test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,dev,beam,report,text

.PHONY: setup demo test lint proto clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip check
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/scout demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

proto: setup
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .scout
