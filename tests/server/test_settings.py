"""Settings reject nonsense, naming the file (or variable), the key path and what is allowed."""

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.settings import DEFAULTS, SettingsError, load_settings

EXPERIMENT = """
[[experiments]]
name = "shelf"
salt = "shelf-v1"
surfaces = ["home"]
candidates = 20
{extra}

[[experiments.variants]]
name = "explore"
weight = 1.0
policy = "linucb"
{variant}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scout.toml"
    path.write_text(text)
    return path


def error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ=environ or {})
    return str(info.value)


def test_defaults_load() -> None:
    settings = load_settings(environ={})
    assert settings.server.port == 50051 and settings.limits.max_reward_abs == 1e6
    assert settings.experiments[0].variants[1].params == (("alpha", 0.5),)


def tables(raw: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every table of a parsed TOML document (arrays of tables by index), with its key path."""
    found = [(path, raw)]
    for key, value in raw.items():
        here = f"{path}.{key}" if path else key
        if isinstance(value, dict) and key != "params":
            found += tables(value, here)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                found += tables(item, f"{here}[{i}]")
    return found


def test_an_unknown_key_in_any_table_of_the_defaults_is_rejected(tmp_path: Path) -> None:
    # Generic over the tree: a table another feature adds to defaults.toml is covered without touching this test.
    raw = tomllib.loads(DEFAULTS.read_text())
    for path, _ in tables(raw):
        overlay = copy.deepcopy(raw) if "[" in path else {}  # an array replaces the default one whole
        target: Any = overlay
        for part in filter(None, path.replace("]", "").replace("[", ".").split(".")):
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        target["misspelt_key"] = 1
        message = error(write(tmp_path, to_toml(overlay)))
        key = f"{path}.misspelt_key" if path else "misspelt_key"
        assert message.startswith(f"{tmp_path / 'scout.toml'}: {key}"), message
        assert "unknown key" in message


def to_toml(raw: dict[str, Any]) -> str:
    """A small TOML writer for the test's documents (inline tables for everything nested)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "\n".join(f"{k} = {value(v)}" for k, v in raw.items()) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[join]\nreward_windw_s = 3\n", "join.reward_windw_s: unknown key; [join] takes reward_window_s"),
        ("colour = 1\n", "colour: unknown key"),
        ("[server]\nport = 99999\n", "server.port: must be an integer in 0..65535, got 99999"),
        ('[server]\nport = "x"\n', "server.port: must be an integer in 0..65535, got the string 'x'"),
        ("[server]\nmax_in_flight = 0\n", "server.max_in_flight: must be an integer in 1..100000, got 0"),
        ("[join]\nreward_window_s = -1\n", "join.reward_window_s: must be a number > 0, got -1"),
        ("[join]\nbatch = 2.5\n", "join.batch: must be an integer > 0, got float 2.5"),
        ("[limits]\nmax_reward_abs = inf\n", "limits.max_reward_abs: must be a number > 0, got inf"),
        ("[join]\ndefault_reward = 2e6\n", "join.default_reward: must be within limits.max_reward_abs"),
        ("server = 3\n", "server: must be a table, got int 3"),
        (
            EXPERIMENT.format(extra="emerging = { popularity_quantile = 0.1, colour = 1 }", variant=""),
            "experiments[0].emerging.colour (experiment 'shelf'): unknown key",
        ),
        (
            EXPERIMENT.format(extra="", variant="parms = { alpha = 1 }"),
            "experiments[0].variants[0].parms (experiment 'shelf', variant 'explore'): unknown key",
        ),
        (
            EXPERIMENT.format(extra="", variant="params = { alpha = -1.0 }"),
            "experiments[0].variants[0].params.alpha (experiment 'shelf', variant 'explore'): alpha must be "
            "non-negative",
        ),
        (
            EXPERIMENT.format(extra="", variant="params = { alpah = 1.0 }"),
            "experiments[0].variants[0].params.alpah (experiment 'shelf', variant 'explore'): bad parameters",
        ),
        (
            EXPERIMENT.format(extra="", variant='params = { alpha = "wide" }'),
            "experiments[0].variants[0].params.alpha (experiment 'shelf', variant 'explore')",
        ),
        (
            EXPERIMENT.format(extra="", variant="").replace('policy = "linucb"', 'policy = "ucb"'),
            "experiments[0].variants[0].policy (experiment 'shelf', variant 'explore'): must be one of",
        ),
        (
            EXPERIMENT.format(extra="", variant="").replace('salt = "shelf-v1"', ""),
            "experiments[0].salt (experiment 'shelf'): required key is missing from [experiments[0]]",
        ),
        (
            EXPERIMENT.format(extra="", variant="").replace("weight = 1.0", ""),
            "experiments[0].variants[0].weight (experiment 'shelf', variant 'explore'): required key is missing",
        ),
        ("experiments = []\n", "experiments: at least one [[experiments]] table is required"),
        ('key_prefix = "{a}"\n', "key_prefix: must be 1-64 characters without braces or commas"),
        ("redis_cluster = true\n", "redis_cluster: needs redis_url"),
        ("redis_shards = 2000\n", "redis_shards: must be an integer in 0..1024"),
    ],
)
def test_bad_files_name_the_file_the_key_path_and_what_is_allowed(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}: {expected}"), message


def test_environment_variables_are_named_not_the_defaults() -> None:
    for value in ("abc", "99999", "-1"):
        message = error(environ={"SCOUT_PORT": value})
        assert message.startswith("environment variable SCOUT_PORT: server.port: must be an integer in 0..65535")
        assert "defaults.toml" not in message
    assert load_settings(environ={"SCOUT_PORT": "0"}).server.port == 0


def test_shards_default_to_16_on_a_cluster_and_1_otherwise() -> None:
    assert load_settings(environ={}).shards == 1
    cluster = {"SCOUT_REDIS_URL": "redis://127.0.0.1:7000", "SCOUT_REDIS_CLUSTER": "true"}
    assert load_settings(environ=cluster).shards == 16
    assert load_settings(environ={**cluster, "SCOUT_REDIS_SHARDS": "6"}).shards == 6


def test_a_file_overrides_keys_at_any_depth_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[join]\nreward_window_s = 9.5\n"), environ={"SCOUT_PORT": "7"})
    assert settings.join.reward_window_s == 9.5 and settings.join.batch == 500 and settings.server.port == 7


def test_invalid_toml_and_missing_files_name_the_file(tmp_path: Path) -> None:
    assert error(write(tmp_path, "[join\n")).startswith(f"{tmp_path / 'scout.toml'}: invalid TOML")
    assert error(tmp_path / "absent.toml").startswith(f"{tmp_path / 'absent.toml'}: cannot read settings")


def test_serve_rejects_an_out_of_range_port_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for port in ("99999", "-2", "abc"):
        with pytest.raises(SystemExit) as info:
            main(["serve", "--port", port])
        assert info.value.code == 2
        assert f"argument --port: must be an integer in 0..65535, got '{port}'" in capsys.readouterr().err


def test_serve_reports_a_bad_config_and_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "[join]\nreward_windw_s = 3\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert f"{path}: join.reward_windw_s: unknown key" in caplog.text


def test_late_rewards_may_not_share_the_decisions_log_directory(tmp_path: Path) -> None:
    # Review: the decisions and late exporters of one process would write files of the same names into it
    message = error(write(tmp_path, f'[export]\nlog_dir = "{tmp_path}/x/late"\n'))
    assert "export.log_dir" in message and "late rewards need a directory of their own" in message
    message = error(write(tmp_path, f'[export]\nlog_dir = "{tmp_path}/logs"\nlate_log_dir = "{tmp_path}/logs/"\n'))
    assert "export.late_log_dir" in message
