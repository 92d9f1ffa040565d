"""The joined decision log: its Parquet schema, writing records, reading and validating files.

One row per decision. Columns (lists are in slot order unless noted):

=====================  ======================  =========================================================
column                 type                    meaning
=====================  ======================  =========================================================
event_id               string                  decision id returned by Recommend
decided_at, joined_at  timestamp[ms, UTC]      when the decision was made, when its reward window closed
unit_id, surface       string                  the request's assignment unit and surface
experiment, variant    string                  assignment
policy                 string                  policy type (``epsilon_greedy``, ``linucb``)
policy_version         string                  version of the policy snapshot that ranked
index_version          string                  version of the index artifact that retrieved
emerging_rule          string                  JSON of the emerging-creator rule, threshold included
context_keys           list<string>            context feature names, in feature order
context_values         list<double>            the values used (0.0 for keys the request omitted)
seed_item_ids          list<string>            the request's seed items (they define the query)
exclude_item_ids       list<string>            the request's exclusions
candidate_ids          list<string>            retrieved candidates, in retrieval order
item_ids, creator_ids  list<string>            served items and their creators
propensities           list<double>            P(item at slot k | items in slots before k), in (0, 1]
slate_probability      double                  product of the propensities
emerging               list<bool>              emerging flag of each served item
rewards                list<double>            joined reward per slot (the default where none arrived)
reward_observed        list<bool>              whether a reward arrived for that slot
default_reward         double                  the reward used for slots without one
config_version         string                  the server's experiments config (sha256 prefix); "" in v1 files
assignment             string                  why this variant served: variant, holdout, outside or paused
shadows                string                  JSON per shadow policy: policy, version, propensities, slate_probability
require_exposure       bool                    the experiment trains only on exposed decisions
exposed                bool                    an Expose call arrived within the reward window
=====================  ======================  =========================================================

Version 2 added ``config_version``, ``assignment``, ``shadows``, ``require_exposure`` and ``exposed``; version-1
files are read with them "", "variant", "{}", false and true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from offline_eval.base import LogError
from offline_eval.storage import list_files, open_file

_STR_LIST = pa.list_(pa.string())
_F64_LIST = pa.list_(pa.float64())
_TIME = pa.timestamp("ms", tz="UTC")
#: Version of the columns below; files carry it as Parquet schema metadata ``scout.schema_version``.
SCHEMA_VERSION = "3"
#: Versions this reader accepts, and the columns each lacks (filled with their default when read).
READABLE: dict[str, dict[str, Any]] = {
    "1": {
        "config_version": "",
        "assignment": "variant",
        "shadows": "{}",
        "require_exposure": False,
        "exposed": True,
        "reward_aggregation": "first",
        "emerging_candidates": 0,
    },
    "2": {"reward_aggregation": "first", "emerging_candidates": 0},
    "3": {},
}
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("decided_at", _TIME),
        ("joined_at", _TIME),
        ("unit_id", pa.string()),
        ("surface", pa.string()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        ("policy", pa.string()),
        ("policy_version", pa.string()),
        ("index_version", pa.string()),
        ("emerging_rule", pa.string()),
        ("context_keys", _STR_LIST),
        ("context_values", _F64_LIST),
        ("seed_item_ids", _STR_LIST),
        ("exclude_item_ids", _STR_LIST),
        ("candidate_ids", _STR_LIST),
        ("item_ids", _STR_LIST),
        ("creator_ids", _STR_LIST),
        ("propensities", _F64_LIST),
        ("slate_probability", pa.float64()),
        ("emerging", pa.list_(pa.bool_())),
        ("rewards", _F64_LIST),
        ("reward_observed", pa.list_(pa.bool_())),
        ("default_reward", pa.float64()),
        ("config_version", pa.string()),
        ("assignment", pa.string()),
        ("shadows", pa.string()),
        ("require_exposure", pa.bool_()),
        ("exposed", pa.bool_()),
        ("reward_aggregation", pa.string()),
        ("emerging_candidates", pa.int32()),
    ]
)


def records_to_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Joined records (dicts with the schema's keys; times as epoch milliseconds) to an Arrow table."""
    table = pa.Table.from_pylist(list(records), schema=SCHEMA)
    for name, default in READABLE["1"].items():  # records made before these existed (and synthetic ones) lack them
        index = SCHEMA.get_field_index(name)
        table = table.set_column(index, name, pc.fill_null(table.column(index), default))
    return table


@dataclass(frozen=True)
class DecisionLog:
    """Decoded log columns, one entry per decision (lists hold one Python list per decision)."""

    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.columns["event_id"])

    def __getitem__(self, name: str) -> list[Any]:
        return self.columns[name]

    def where(self, keep: np.ndarray) -> DecisionLog:
        """The decisions where ``keep`` (one boolean per decision) is true."""
        idx = np.flatnonzero(keep)
        return DecisionLog({k: [v[i] for i in idx] for k, v in self.columns.items()})

    def decided_ms(self) -> np.ndarray:
        """When each decision was made, in milliseconds since the epoch (int64)."""
        stamps = pa.array(self.columns["decided_at"], type=pa.timestamp("ms", tz="UTC"))  # datetimes or ints
        return np.asarray(stamps.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def read_logs(path: str | Path) -> DecisionLog:
    """Read a Parquet file or a directory of them and validate it; problems raise ``LogError``.

    ``path`` is a local path or a URI (``gs://``, ``s3://``, ``hdfs://``, ``file://``; see
    :mod:`offline_eval.storage`).
    """
    tables = []
    for file in list_files(path, (".parquet",)):
        try:
            with open_file(file) as handle:
                table = pq.read_table(handle)
        except (OSError, pa.ArrowException) as exc:
            raise LogError(f"{file}: cannot read Parquet: {exc}") from exc
        raw_version = (table.schema.metadata or {}).get(b"scout.schema_version")
        version = SCHEMA_VERSION if raw_version is None else raw_version.decode()
        if version not in READABLE:
            raise LogError(f"{file}: log schema version {version}; this reader knows versions {', '.join(READABLE)}")
        for name, default in READABLE[version].items():
            if name not in table.column_names:
                table = table.append_column(name, pa.array([default] * table.num_rows, SCHEMA.field(name).type))
        missing = [name for name in SCHEMA.names if name not in table.column_names]
        if missing:
            raise LogError(f"{file}: missing column(s) {', '.join(missing)}")
        _validate(file, table)
        tables.append(table.select(SCHEMA.names).cast(SCHEMA))
    table = pa.concat_tables(tables)
    return DecisionLog({name: table.column(name).to_pylist() for name in SCHEMA.names})


def _validate(file: str, table: pa.Table) -> None:
    props, rewards, items = (table.column(c).to_pylist() for c in ("propensities", "rewards", "item_ids"))
    for row, (p, r, i) in enumerate(zip(props, rewards, items, strict=True)):
        if p is None or r is None or i is None or not len(p) == len(r) == len(i):
            raise LogError(f"{file}: row {row}: item_ids, propensities and rewards must have one entry per slot")
        if not all(x is not None and 0.0 < x <= 1.0 for x in p):
            raise LogError(f"{file}: column propensities: row {row} has a value outside (0, 1]: {p}")
        if not all(x is not None and np.isfinite(x) for x in r):
            raise LogError(f"{file}: column rewards: row {row} has a missing or non-finite value: {r}")
