"""Settings: one frozen dataclass tree from the embedded defaults, a TOML file and ``SCOUT_*`` variables."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bandits.emerging import EmergingRule
from bandits.registry import POLICIES

DEFAULTS = Path(__file__).with_name("defaults.toml")
ENVIRONMENT = {
    "SCOUT_REDIS_URL": ("redis_url",),
    "SCOUT_INDEX": ("index",),
    "SCOUT_HOST": ("server", "host"),
    "SCOUT_PORT": ("server", "port"),
    "SCOUT_LOG_DIR": ("export", "log_dir"),
}


class SettingsError(ValueError):
    """Invalid settings; the message names the file or variable and the key."""


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: its traffic weight and its policy."""

    name: str
    weight: float
    policy: str
    params: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Experiment:
    """An experiment: the surfaces it fills, its assignment salt, context features, candidates and variants."""

    name: str
    salt: str
    surfaces: tuple[str, ...]
    context_keys: tuple[str, ...]
    candidates: int
    emerging: EmergingRule
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class ServerSettings:
    """gRPC serving."""

    host: str
    port: int
    max_num_items: int
    refresh_interval_s: float
    health_interval_s: float = 0.5


@dataclass(frozen=True)
class JoinSettings:
    """Reward joins."""

    reward_window_s: float
    default_reward: float
    poll_interval_s: float
    batch: int
    closed_ttl_s: int
    decision_stream_maxlen: int
    pending_ttl_s: int = 604800
    joined_stream_maxlen: int = 1000000
    late_stream_maxlen: int = 100000


@dataclass(frozen=True)
class LearnerSettings:
    """The learner loop."""

    poll_interval_s: float
    batch: int
    lease_ttl_s: float = 10.0
    max_abs_value: float = 1e6


@dataclass(frozen=True)
class ExportSettings:
    """Parquet export of joined decisions."""

    log_dir: Path
    flush_rows: int
    flush_interval_s: float
    max_file_bytes: int = 128 * 1024 * 1024
    late_log_dir: Path | None = None
    consumer_ttl_s: float = 30.0

    @property
    def late_dir(self) -> Path:
        """Where late rewards are exported: ``late_log_dir``, else ``late`` next to ``log_dir``."""
        return self.late_log_dir if self.late_log_dir is not None else self.log_dir.parent / "late"


@dataclass(frozen=True)
class Settings:
    """Everything the server reads, passed down explicitly."""

    redis_url: str
    index: Path
    data_dir: Path
    key_prefix: str
    server: ServerSettings
    join: JoinSettings
    learner: LearnerSettings
    export: ExportSettings
    experiments: tuple[Experiment, ...]
    redis_appendfsync: str = "everysec"
    redis_maxmemory: str = "1gb"

    def experiment_for(self, surface: str) -> Experiment | None:
        """The experiment that fills ``surface``, if any."""
        return next((e for e in self.experiments if surface in e.surfaces), None)


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the defaults, overlay ``path`` (if given) and ``SCOUT_*`` variables, and validate."""
    raw = _read(DEFAULTS)
    source = str(DEFAULTS)
    if path is not None:
        overlay = _read(path)
        source = str(path)
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
    for var, keys in ENVIRONMENT.items():
        value = (os.environ if environ is None else environ).get(var)
        if value is not None:
            target = raw
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = int(value) if keys[-1] == "port" and value.isdigit() else value
    try:
        return _build(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingsError(f"{source}: {exc}") from exc


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from exc


def _positive(name: str, value: Any, kind: type = float) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if kind is int and int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return kind(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def _non_negative_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _build(raw: dict[str, Any]) -> Settings:
    s, j, le, ex = raw["server"], raw["join"], raw["learner"], raw["export"]
    port = s["port"]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"server.port must be an integer in 0..65535, got {port!r}")
    default_reward = j["default_reward"]
    if not isinstance(default_reward, int | float) or not math.isfinite(default_reward):
        raise ValueError(f"join.default_reward must be a finite number, got {default_reward!r}")
    experiments = tuple(_experiment(i, e) for i, e in enumerate(raw.get("experiments", [])))
    if not experiments:
        raise ValueError("at least one [[experiments]] table is required")
    surfaces = [surface for e in experiments for surface in e.surfaces]
    if len(surfaces) != len(set(surfaces)):
        raise ValueError(f"a surface may belong to one experiment only; got {surfaces}")
    return Settings(
        redis_url=str(raw.get("redis_url") or ""),
        index=Path(raw["index"]),
        data_dir=Path(raw["data_dir"]),
        key_prefix=str(raw["key_prefix"]),
        redis_appendfsync=_choice("redis_appendfsync", raw["redis_appendfsync"], ("always", "everysec", "no")),
        redis_maxmemory=str(raw["redis_maxmemory"]),
        server=ServerSettings(
            str(s["host"]),
            port,
            _positive("server.max_num_items", s["max_num_items"], int),
            _positive("server.refresh_interval_s", s["refresh_interval_s"]),
            _positive("server.health_interval_s", s["health_interval_s"]),
        ),
        join=JoinSettings(
            reward_window_s=_positive("join.reward_window_s", j["reward_window_s"]),
            default_reward=float(default_reward),
            poll_interval_s=_positive("join.poll_interval_s", j["poll_interval_s"]),
            batch=_positive("join.batch", j["batch"], int),
            closed_ttl_s=_positive("join.closed_ttl_s", j["closed_ttl_s"], int),
            decision_stream_maxlen=_non_negative_int("join.decision_stream_maxlen", j["decision_stream_maxlen"]),
            pending_ttl_s=_positive("join.pending_ttl_s", j["pending_ttl_s"], int),
            joined_stream_maxlen=_positive("join.joined_stream_maxlen", j["joined_stream_maxlen"], int),
            late_stream_maxlen=_positive("join.late_stream_maxlen", j["late_stream_maxlen"], int),
        ),
        learner=LearnerSettings(
            _positive("learner.poll_interval_s", le["poll_interval_s"]),
            _positive("learner.batch", le["batch"], int),
            _positive("learner.lease_ttl_s", le["lease_ttl_s"]),
            _positive("learner.max_abs_value", le["max_abs_value"]),
        ),
        export=ExportSettings(
            Path(ex["log_dir"]),
            _positive("export.flush_rows", ex["flush_rows"], int),
            _positive("export.flush_interval_s", ex["flush_interval_s"]),
            _positive("export.max_file_bytes", ex["max_file_bytes"], int),
            Path(ex["late_log_dir"]) if ex["late_log_dir"] else None,
            _positive("export.consumer_ttl_s", ex["consumer_ttl_s"]),
        ),
        experiments=experiments,
    )


def _experiment(i: int, e: dict[str, Any]) -> Experiment:
    where = f"experiments[{i}]"
    variants = []
    for k, v in enumerate(e.get("variants", [])):
        name = f"{where}.variants[{k}]"
        if v.get("policy") not in POLICIES:
            raise ValueError(f"{name}.policy must be one of {sorted(POLICIES)}, got {v.get('policy')!r}")
        params = v.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"{name}.params must be a table")
        variants.append(
            Variant(
                str(v["name"]), _positive(f"{name}.weight", v["weight"]), v["policy"], tuple(sorted(params.items()))
            )
        )
    if len(variants) < 1 or len({v.name for v in variants}) != len(variants):
        raise ValueError(f"{where}.variants must name at least one variant, each once")
    keys = tuple(str(k) for k in e.get("context_keys", []))
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}.context_keys has duplicates: {list(keys)}")
    try:
        emerging = EmergingRule(**e.get("emerging", {}))
    except TypeError as exc:
        raise ValueError(f"{where}.emerging: {exc}") from exc
    surfaces = tuple(str(x) for x in e["surfaces"])
    if not surfaces:
        raise ValueError(f"{where}.surfaces must name at least one surface")
    return Experiment(
        name=str(e["name"]),
        salt=str(e["salt"]),
        surfaces=surfaces,
        context_keys=keys,
        candidates=_positive(f"{where}.candidates", e["candidates"], int),
        emerging=emerging,
        variants=tuple(variants),
    )
