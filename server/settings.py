"""Settings: one frozen dataclass tree from the embedded defaults, a TOML file and ``SCOUT_*`` variables.

The loader is generic over the dataclasses below: every key of every table (at any depth, in arrays of tables
too) must be a field of the dataclass it fills, every field without a default must be present, and every value
must have the field's type. Numeric ranges are part of the type (``Annotated[int, Bounds(ge=0, le=65535)]``,
:data:`PositiveInt`, :data:`PositiveFloat`); checks across fields live in each dataclass's ``__post_init__``. A
new setting is one annotated field plus its key in ``defaults.toml``; nothing else in the loader changes.
Errors name where the offending value came from (the file, or the environment variable), the key path, and what
is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from bandits.base import Policy, PolicyStateError
from bandits.emerging import EmergingRule
from bandits.registry import POLICIES, create_policy, load_policy

DEFAULTS = Path(__file__).with_name("defaults.toml")
ENVIRONMENT = {
    "SCOUT_REDIS_URL": ("redis_url",),
    "SCOUT_REDIS_CLUSTER": ("redis_cluster",),
    "SCOUT_REDIS_SHARDS": ("redis_shards",),
    "SCOUT_INDEX": ("index",),
    "SCOUT_HOST": ("server", "host"),
    "SCOUT_PORT": ("server", "port"),
    "SCOUT_LOG_DIR": ("export", "log_dir"),
    "SCOUT_METRICS_PORT": ("server", "metrics_port"),
    "SCOUT_TLS_CERT_FILE": ("security", "tls_cert_file"),
    "SCOUT_TLS_KEY_FILE": ("security", "tls_key_file"),
    "SCOUT_TLS_CLIENT_CA_FILE": ("security", "tls_client_ca_file"),
    "SCOUT_TOKENS_FILE": ("security", "tokens_file"),
}


class SettingsError(ValueError):
    """Invalid settings; the message names the file or variable, the key path and what is allowed."""


class FieldError(ValueError):
    """Raised by a settings dataclass's ``__post_init__``: ``key`` is the offending key below its table."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Bounds:
    """Range of a numeric setting, attached with ``Annotated``: the loader checks ``> gt``, ``>= ge``, ``<= le``."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None


FREE_TABLE = "free table"  # marks a table whose keys are not fields (policy parameters, checked by the policy)
PositiveInt = Annotated[int, Bounds(gt=0)]
#: How several rewards for one served item combine before the join (``reward_aggregation``).
REWARD_AGGREGATIONS = ("first", "sum", "max")
PositiveFloat = Annotated[float, Bounds(gt=0)]


def _check_policy(policy: str, params: tuple[tuple[str, Any], ...]) -> None:
    """Construct the policy once, naming the parameter that fails (``FieldError``)."""
    if policy not in POLICIES:
        raise FieldError(("policy",), f"must be one of {sorted(POLICIES)}, got {policy!r}")
    values = dict(params)
    try:
        create_policy(policy, 1, values)
    except (TypeError, ValueError) as exc:
        for key, value in values.items():  # name the parameter that fails on its own
            try:
                create_policy(policy, 1, {key: value})
            except (TypeError, ValueError) as single:
                raise FieldError(("params", key), str(single)) from exc
        raise FieldError(("params",), str(exc)) from exc


@dataclass(frozen=True)
class ShadowPolicy:
    """A policy that is not served but scores every served slate of its variant, logged for offline evaluation."""

    name: str
    policy: str
    params: Annotated[tuple[tuple[str, Any], ...], FREE_TABLE] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise FieldError(("name",), f"must be a non-empty name without '/', got {self.name!r}")
        _check_policy(self.policy, self.params)


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: its traffic weight, its policy, and the shadow policies that score its slates."""

    name: str
    weight: PositiveFloat
    policy: str
    params: Annotated[tuple[tuple[str, Any], ...], FREE_TABLE] = ()
    shadows: tuple[ShadowPolicy, ...] = ()
    #: Who counts as emerging for this variant (default: the experiment's rule); exposure knobs are policy params.
    emerging: EmergingRule | None = None
    #: A policy snapshot (``Policy.to_bytes``, e.g. exported from another variant) the variant starts from.
    warm_start: Path | None = None
    #: Bump to reset the variant's learning: snapshots of other generations are ignored, it starts over.
    generation: Annotated[int, Bounds(ge=0)] = 0
    #: Retrieval-side quota: candidates taken from a second search restricted to emerging creators.
    emerging_candidates: Annotated[int, Bounds(ge=0)] = 0

    def __post_init__(self) -> None:
        _check_policy(self.policy, self.params)
        if self.warm_start is not None:
            self.initial_policy(None)  # a missing, corrupt or other-policy file fails at load, naming the file
        names = [s.name for s in self.shadows]
        if len(set(names)) != len(names):
            raise FieldError(("shadows",), f"shadow names must be unique, got {names}")

    def initial_policy(self, feature_dim: int | None) -> Policy:
        """The policy the variant starts from: ``warm_start`` loaded with ``params``, or a fresh ``policy``.

        Raises ``FieldError`` naming ``warm_start`` when the file cannot be read or loaded, holds another policy,
        or (given ``feature_dim``) has another feature dimension.
        """
        if self.warm_start is None:
            return create_policy(self.policy, feature_dim or 1, dict(self.params))
        try:
            policy = load_policy(self.warm_start.read_bytes(), dict(self.params))
        except (OSError, PolicyStateError, ValueError, TypeError) as exc:
            raise FieldError(("warm_start",), f"{self.warm_start}: cannot load a policy snapshot: {exc}") from exc
        if policy.name != self.policy:
            raise FieldError(("warm_start",), f"{self.warm_start} holds a {policy.name} policy, not {self.policy}")
        if feature_dim is not None and policy.feature_dim != feature_dim:
            raise FieldError(
                ("warm_start",),
                f"{self.warm_start} has {policy.feature_dim} features; this index and context need {feature_dim}",
            )
        return policy


@dataclass(frozen=True)
class Experiment:
    """An experiment: the surfaces it fills, its assignment salt, context features, candidates and variants."""

    name: str
    salt: str
    surfaces: tuple[str, ...]
    candidates: PositiveInt
    variants: tuple[Variant, ...]
    context_keys: tuple[str, ...] = ()
    emerging: EmergingRule = field(default_factory=EmergingRule)
    layer: str = ""
    reward_window_s: PositiveFloat | None = None
    default_reward: float | None = None
    require_exposure: bool = False
    reward_aggregation: str = "first"
    traffic: Annotated[float, Bounds(gt=0, le=1)] = 1.0
    holdout: Annotated[float, Bounds(ge=0, le=0.99)] = 0.0

    @property
    def layer_name(self) -> str:
        """The layer this experiment shares traffic in (its own name when it sets none)."""
        return self.layer or self.name

    def __post_init__(self) -> None:
        if not self.surfaces:
            raise FieldError(("surfaces",), "must name at least one surface")
        if any(not s for s in self.surfaces):
            raise FieldError(("surfaces",), "surfaces must be non-empty strings")
        if self.reward_aggregation not in REWARD_AGGREGATIONS:
            raise FieldError(
                ("reward_aggregation",),
                f"must be one of {', '.join(REWARD_AGGREGATIONS)}, got {self.reward_aggregation!r}",
            )
        if len(set(self.context_keys)) != len(self.context_keys):
            raise FieldError(("context_keys",), f"has duplicates: {list(self.context_keys)}")
        if not self.variants:
            raise FieldError(("variants",), "must name at least one variant ([[experiments.variants]])")
        for k, v in enumerate(self.variants):
            if v.emerging_candidates > self.candidates:
                raise FieldError(
                    ("variants", k, "emerging_candidates"),
                    f"must be at most the experiment's candidates ({self.candidates}), got {v.emerging_candidates}",
                )
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise FieldError(("variants",), f"variant names must be unique, got {names}")


@dataclass(frozen=True)
class ServerSettings:
    """gRPC serving.

    ``event_id_seed`` makes event ids (and so each decision's sampling) reproducible, for demos and tests only:
    a restarted server repeats the same ids, so never set it where decisions outlive a process.
    """

    host: str
    port: Annotated[int, Bounds(ge=0, le=65535)]
    max_num_items: Annotated[int, Bounds(ge=1, le=1000)]
    refresh_interval_s: PositiveFloat
    health_interval_s: PositiveFloat = 0.5
    decide_threads: Annotated[int, Bounds(ge=1, le=64)] = 2
    max_in_flight: Annotated[int, Bounds(ge=1, le=100_000)] = 64
    event_id_seed: Annotated[int, Bounds(ge=0)] | None = None
    index_watch_interval_s: PositiveFloat = 2.0
    config_watch_interval_s: PositiveFloat = 2.0
    metrics_port: Annotated[int, Bounds(ge=0, le=65535)] | None = None
    reuse_port: bool = False
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class SecuritySettings:
    """Transport security and authentication (see the README's "Security").

    ``tls_cert_file`` and ``tls_key_file`` (PEM) turn on TLS; ``tls_client_ca_file`` also requires every client to
    present a certificate signed by that CA (mutual TLS). ``tokens_file`` holds accepted bearer tokens, one per
    line (blank lines and ``#`` comments ignored): every RPC except health and reflection then needs the metadata
    ``authorization: Bearer <token>``.
    """

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tokens_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise FieldError((missing,), "tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise FieldError(("tls_client_ca_file",), "mutual TLS needs tls_cert_file and tls_key_file too")


@dataclass(frozen=True)
class JoinSettings:
    """Reward joins."""

    reward_window_s: PositiveFloat
    default_reward: float
    poll_interval_s: PositiveFloat
    batch: PositiveInt
    closed_ttl_s: PositiveInt
    decision_stream_maxlen: Annotated[int, Bounds(ge=0)]
    pending_ttl_s: PositiveInt = 604800
    joined_stream_maxlen: PositiveInt = 1000000
    late_stream_maxlen: PositiveInt = 100000

    def __post_init__(self) -> None:
        if self.pending_ttl_s <= self.reward_window_s:
            raise FieldError(("pending_ttl_s",), f"must exceed reward_window_s ({self.reward_window_s:g})")


@dataclass(frozen=True)
class LearnerSettings:
    """The learner loop."""

    poll_interval_s: PositiveFloat
    batch: PositiveInt
    lease_ttl_s: PositiveFloat = 10.0


@dataclass(frozen=True)
class ExportSettings:
    """Parquet export of joined decisions (and late rewards); files roll by rows, bytes or age."""

    log_dir: Path
    flush_rows: PositiveInt
    flush_interval_s: PositiveFloat
    max_file_bytes: PositiveInt = 128 * 1024 * 1024
    late_log_dir: Path | None = None
    consumer_ttl_s: PositiveFloat = 30.0

    def __post_init__(self) -> None:
        if os.path.abspath(self.late_dir) == os.path.abspath(self.log_dir):
            # the two exporters of a process would write files of the same names into one directory
            key = "late_log_dir" if self.late_log_dir is not None else "log_dir"
            raise FieldError((key,), f"late rewards need a directory of their own, not log_dir ({self.log_dir})")

    @property
    def late_dir(self) -> Path:
        """Where late rewards are exported: ``late_log_dir``, else ``late`` next to ``log_dir``."""
        return self.late_log_dir if self.late_log_dir is not None else self.log_dir.parent / "late"


@dataclass(frozen=True)
class LimitSettings:
    """Bounds on the numbers a request may send into the models (see the README's "Limits")."""

    max_context_abs: PositiveFloat
    max_reward_abs: PositiveFloat


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
    limits: LimitSettings
    experiments: tuple[Experiment, ...]
    redis_appendfsync: str = "everysec"
    redis_maxmemory: str = "1gb"
    security: SecuritySettings = field(default_factory=SecuritySettings)
    redis_cluster: bool = False
    redis_shards: Annotated[int, Bounds(ge=0, le=1024)] = 0

    @property
    def shards(self) -> int:
        """How many shards decisions are spread over: ``redis_shards``, or when 0, 16 on a cluster and 1 otherwise."""
        return self.redis_shards or (16 if self.redis_cluster else 1)

    def __post_init__(self) -> None:
        if self.redis_appendfsync not in ("always", "everysec", "no"):
            raise FieldError(
                ("redis_appendfsync",), f"must be one of always, everysec, no; got {self.redis_appendfsync!r}"
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{},") or len(self.key_prefix) > 64:
            raise FieldError(
                ("key_prefix",), f"must be 1-64 characters without braces or commas, got {self.key_prefix!r}"
            )
        if self.redis_cluster and not self.redis_url:
            raise FieldError(
                ("redis_cluster",), "needs redis_url (a node of the cluster): the embedded Redis is not a cluster"
            )
        if not self.experiments:
            raise FieldError(("experiments",), "at least one [[experiments]] table is required")
        names = [e.name for e in self.experiments]
        if len(names) != len(set(names)):
            raise FieldError(("experiments",), f"experiment names must be unique, got {names}")
        layers: dict[str, str] = {}
        for k, experiment in enumerate(self.experiments):
            for surface in experiment.surfaces:
                other = layers.setdefault(surface, experiment.layer_name)
                if other != experiment.layer_name:
                    raise FieldError(
                        ("experiments", k, "layer"),
                        f"surface {surface!r} is also filled by layer {other!r}: experiments sharing a surface must "
                        "share a layer (so each unit lands in one of them)",
                    )
        used: dict[str, float] = {}
        for k, experiment in enumerate(self.experiments):
            used[experiment.layer_name] = used.get(experiment.layer_name, 0.0) + experiment.traffic
            if used[experiment.layer_name] > 1.0 + 1e-9:
                raise FieldError(
                    ("experiments", k, "traffic"),
                    f"the experiments of layer {experiment.layer_name!r} take {used[experiment.layer_name]:g} of its "
                    "traffic; at most 1",
                )
        for k, experiment in enumerate(self.experiments):
            window = experiment.reward_window_s
            if window is not None and window >= self.join.pending_ttl_s:
                raise FieldError(
                    ("experiments", k, "reward_window_s"),
                    f"must be below join.pending_ttl_s ({self.join.pending_ttl_s})",
                )
            default = experiment.default_reward
            if default is not None and abs(default) > self.limits.max_reward_abs:
                raise FieldError(
                    ("experiments", k, "default_reward"),
                    f"must be within limits.max_reward_abs ({self.limits.max_reward_abs:g}), got {default:g}",
                )
        if abs(self.join.default_reward) > self.limits.max_reward_abs:
            raise FieldError(
                ("join", "default_reward"),
                f"must be within limits.max_reward_abs ({self.limits.max_reward_abs:g}), "
                f"got {self.join.default_reward:g}",
            )

    def experiment_for(self, surface: str) -> Experiment | None:
        """The first experiment that fills ``surface`` (it serves units outside every experiment's traffic)."""
        return next((e for e in self.experiments if surface in e.surfaces), None)

    def experiments_for(self, surface: str) -> tuple[Experiment, ...]:
        """Every experiment that fills ``surface`` (one layer), in config order."""
        return tuple(e for e in self.experiments if surface in e.surfaces)

    def layer_range(self, experiment: Experiment) -> tuple[float, float]:
        """The part ``[start, end)`` of its layer's bucket space that ``experiment`` takes (config order)."""
        start = 0.0
        for other in self.experiments:
            if other.layer_name != experiment.layer_name:
                continue
            if other.name == experiment.name:
                return start, start + other.traffic
            start += other.traffic
        raise KeyError(experiment.name)


def config_version(settings: Settings) -> str:
    """A short content hash of the experiments: what a config reload may change, logged with every decision."""
    return hashlib.sha256(repr(settings.experiments).encode()).hexdigest()[:12]


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the defaults, overlay ``path`` (if given) and ``SCOUT_*`` variables, and validate.

    Tables merge key by key at every depth; an array (``[[experiments]]``) replaces the default one whole.

    Raises
    ------
    SettingsError
        A file cannot be read or parsed, or a key is unknown, missing, of the wrong type or out of range; the
        message starts with the file or variable the value came from and names the key path.
    """
    raw = _read(DEFAULTS)
    origins: dict[tuple[str | int, ...], str] = {(): str(DEFAULTS)}
    if path is not None:
        _merge(raw, _read(path), origins, str(path), ())
    for var, keys in ENVIRONMENT.items():
        value = (os.environ if environ is None else environ).get(var)
        if value is not None:
            _merge(raw, _nest(keys, _FromEnv(value)), origins, f"environment variable {var}", ())
    try:
        settings = _table(Settings, raw, ())
    except _Bad as bad:
        raise SettingsError(f"{_origin(origins, bad.path)}: {_render(raw, bad.path)}: {bad.message}") from None
    assert isinstance(settings, Settings)
    return settings


class _FromEnv(str):
    """A value read from an environment variable: parsed to the field's type rather than type-checked."""

    __slots__ = ()


class _Bad(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from exc


def _nest(keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        out = {key: out}
    return out


def _merge(
    base: dict[str, Any],
    overlay: dict[str, Any],
    origins: dict[tuple[str | int, ...], str],
    source: str,
    prefix: tuple[str | int, ...],
) -> None:
    for key, value in overlay.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            origins.setdefault(path, origins.get(prefix, source))
            _merge(base[key], value, origins, source, path)
        else:
            base[key] = value
            for known in [p for p in origins if p[: len(path)] == path]:
                del origins[known]
            origins[path] = source


def _origin(origins: dict[tuple[str | int, ...], str], path: tuple[str | int, ...]) -> str:
    for end in range(len(path), -1, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return str(DEFAULTS)


def _render(raw: Any, path: tuple[str | int, ...]) -> str:
    text, names, node, last = "", [], raw, ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                names.append(f"{last.removesuffix('s')} {node['name']!r}")
        else:
            text += f".{key}" if text else key
            last = key
            node = node.get(key) if isinstance(node, dict) else None
    text = text or "settings"
    return f"{text} ({', '.join(names)})" if names else text


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _table(cls: type, raw: Any, path: tuple[str | int, ...]) -> Any:
    table = f"[{_render({}, path)}]" if path else "the top level"
    if not isinstance(raw, dict):
        raise _Bad(path, f"must be a table, got {_kind(raw)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise _Bad((*path, key), f"unknown key; {table} takes {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Bad((*path, name), f"required key is missing from {table}")
            continue
        values[name] = _value(hints[name], raw[name], (*path, name))
    try:
        return cls(**values)
    except FieldError as exc:
        raise _Bad((*path, *exc.key), str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise _Bad(path, str(exc)) from None


def _value(tp: Any, value: Any, path: tuple[str | int, ...], marks: tuple[Any, ...] = ()) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _value(tp.__origin__, value, path, marks + tp.__metadata__)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _value(options[0], value, path, marks)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _table(tp, value, path)
    if FREE_TABLE in marks:
        if not isinstance(value, dict):
            raise _Bad(path, f"must be a table, got {_kind(value)}")
        for key, item in value.items():
            if not isinstance(item, bool | int | float | str):
                raise _Bad((*path, key), f"must be a number, boolean or string, got {_kind(item)}")
        return tuple(sorted(value.items()))
    if origin is tuple:
        if not isinstance(value, list):
            raise _Bad(path, f"must be an array, got {_kind(value)}")
        item_type = get_args(tp)[0]
        return tuple(_value(item_type, item, (*path, k)) for k, item in enumerate(value))
    if tp is str:
        if not isinstance(value, str):
            raise _Bad(path, f"must be a string, got {_kind(value)}")
        return str(value)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _Bad(path, f"must be a non-empty path string, got {_kind(value)}")
        return Path(value)
    if tp is bool:
        if isinstance(value, _FromEnv) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise _Bad(path, f"must be true or false, got {_kind(value)}")
        return value
    if tp in (int, float):
        bounds = next((m for m in marks if isinstance(m, Bounds)), Bounds())
        return _number(tp, value, path, bounds)
    return value


def _number(tp: type, value: Any, path: tuple[str | int, ...], bounds: Bounds) -> Any:
    allowed = ("an integer" if tp is int else "a number") + _describe(bounds)
    if isinstance(value, _FromEnv):
        try:
            value = tp(value)
        except ValueError:
            raise _Bad(path, f"must be {allowed}, got {str(value)!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (tp is int and not isinstance(value, int)):
        raise _Bad(path, f"must be {allowed}, got {_kind(value)}")
    ok = (
        math.isfinite(value)
        and (bounds.gt is None or value > bounds.gt)
        and (bounds.ge is None or value >= bounds.ge)
        and (bounds.le is None or value <= bounds.le)
    )
    if not ok:
        raise _Bad(path, f"must be {allowed}, got {value!r}")
    return tp(value)


def _describe(bounds: Bounds) -> str:
    if bounds.ge is not None and bounds.le is not None:
        return f" in {bounds.ge:g}..{bounds.le:g}"
    parts = [f"{op} {v:g}" for v, op in ((bounds.gt, ">"), (bounds.ge, ">="), (bounds.le, "<=")) if v is not None]
    return " " + " and ".join(parts) if parts else ""
