"""Bandit logs from outside Scout: a simple CSV/Parquet layout, read in bounded batches and validated.

One row per logged action; the rows of one slate share a ``round`` and are contiguous, in position order, in one
file (a round never spans two files).

===================  =========================  ==============================================================
column               type                       meaning
===================  =========================  ==============================================================
action               integer or string          the logged action (item) id
reward               float, finite              its reward
propensity           float in (0, 1]            logging probability of the action at its position, given the
                                                round's earlier positions
target_propensity    float in [0, 1], optional  the target policy's probability of the same (for policies
                                                trained outside Scout); required to estimate without a policy
round                integer or string,         slate id; rows of a round are contiguous (default: one row
                     optional                   per round)
position             integer, optional          0-based position in the slate (default 0); a round's rows
                                                hold positions 0, 1, ... in order
x_<name>             float, optional            context features (any number of columns); they feed the
                                                DM/DR reward model
candidates           list, optional             the round's candidate set (kept for the reader's users; not
                                                needed by the estimators)
===================  =========================  ==============================================================

Bad data raises :class:`~offline_eval.logs.LogError` naming the file, the column and the first bad row (counted
from 0 within the file). With only the logged action's target probability, the DM/DR reward model may depend on
the context and the position but not on the action (its expectation under the target would need the target's
whole distribution); such a baseline still makes DR unbiased and lowers its variance when the context predicts
the reward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from offline_eval.base import LogError, SlateData
from offline_eval.direct_method import DirectMethod
from offline_eval.optimistic_shrinkage import OptimisticShrinkage
from offline_eval.storage import list_files, open_file, open_stream
from offline_eval.summary import Evaluation
from offline_eval.switch_doubly_robust import SwitchDoublyRobust

REQUIRED = ("action", "reward", "propensity")
OPTIONAL = ("target_propensity", "round", "position", "candidates")
CONTEXT_PREFIX = "x_"


#: The flag of DM's estimate on external logs.
ACTION_FREE_MODEL = (
    "the logs give only the logged action's target probability, so the reward model cannot depend on the action: "
    "DM does not see the target policy and estimates the logged rewards' mean"
)
#: The flag of the estimators that lean on that model where the weights are large (SWITCH-DR, DR-OS).
ACTION_FREE_FALLBACK = (
    "the logs give only the logged action's target probability, so the reward model cannot depend on the action: "
    "where this estimator trusts the model over large weights, it uses the logged rewards' mean (IPS, SNIPS, DR and "
    "SNDR do not)"
)
_EXTERNAL_FLAGS = {
    DirectMethod.name: ACTION_FREE_MODEL,
    SwitchDoublyRobust.name: ACTION_FREE_FALLBACK,
    OptimisticShrinkage.name: ACTION_FREE_FALLBACK,
}


def with_external_flags(evaluation: Evaluation) -> Evaluation:
    """``evaluation`` of external logs with the estimates that rely on the action-free reward model flagged."""
    estimates = tuple(
        replace(e, flags=(*e.flags, _EXTERNAL_FLAGS[e.estimator])) if e.estimator in _EXTERNAL_FLAGS else e
        for e in evaluation.estimates
    )
    return replace(evaluation, estimates=estimates)


@dataclass(frozen=True)
class ExternalBatch:
    """A batch of whole rounds as :class:`SlateData`.

    Parameters
    ----------
    data
        The rounds, padded to the reader's number of slots; features are the context columns.
    first_round
        Id of the batch's first round: ``file_number * 2**40`` plus the round's ordinal in its file (ids of a
        batch's rounds are consecutive); it places rounds in cross-fitting folds the same way on any runner.
    key
        ``file_number * 2**32`` plus the batch's number in its file; it seeds the batch's bootstrap counts.
    """

    data: SlateData
    first_round: int
    key: int


def log_files(path: str | Path | Sequence[str | Path]) -> list[str]:
    """The ``.parquet``/``.csv`` files of a file, a directory (recursively) or a list of them, sorted.

    Each location is a local path or a URI (``gs://``, ``s3://``, ``hdfs://``, ``file://``; see
    :mod:`offline_eval.storage`).
    """
    if not isinstance(path, str | Path):
        return [f for p in path for f in log_files(p)]
    return list_files(path, (".parquet", ".csv"))


def count_slots(files: list[str]) -> int:
    """The longest slate (largest position + 1) in ``files``, from Parquet statistics where available."""
    slots = 1
    for file in files:
        names = _columns(file)
        if "position" not in names:
            continue
        top = None
        if not _is_csv(file):
            with open_file(file) as handle:
                meta = pq.ParquetFile(handle).metadata
            col = names.index("position")
            stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)]
            if all(s is not None and s.has_min_max for s in stats):
                top = max((float(s.max) for s in stats), default=0.0)
        if top is None or not math.isfinite(top):  # a bad value is named with its row when its batch is read
            top = max((_finite_max(b.column(0)) for b in _batches(file, ["position"], 1 << 20)), default=0.0)
        slots = max(slots, int(top) + 1)
    return slots


def _finite_max(column: pa.Array) -> float:
    """The largest finite value of a numeric column (0 without one)."""
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return float(np.max(values[np.isfinite(values)], initial=0.0))


def read_external(
    path: str | Path | Sequence[str | Path], batch_size: int = 1 << 20, slots: int | None = None
) -> Iterator[ExternalBatch]:
    """Stream the rounds of external bandit logs, ``batch_size`` rows at a time (memory bounded by it).

    Parameters
    ----------
    path
        A file, a directory of ``.parquet``/``.csv`` files, or a list of them (local paths or URIs).
    batch_size
        Rows read per batch.
    slots
        Slots to pad every slate to; found from the files (largest ``position`` + 1) when None.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    files = log_files(path)
    slots = slots or count_slots(files)
    features: list[str] | None = None
    for number, file in enumerate(files):
        yield from read_file(file, number, batch_size, slots, features)
        features = sorted(c for c in _columns(file) if c.startswith(CONTEXT_PREFIX))


def read_file(
    file: str, number: int, batch_size: int, slots: int, features: list[str] | None = None
) -> Iterator[ExternalBatch]:
    """The batches of one file (its ``number`` among the files read); ``features`` are the expected context columns."""
    key, first_round = number << 32, number << 40
    names = _columns(file)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise LogError(f"{file}: missing column(s) {', '.join(missing)}")
    if "target_propensity" not in names:
        raise LogError(f"{file}: missing column target_propensity (the target's probability of the action)")
    file_features = sorted(c for c in names if c.startswith(CONTEXT_PREFIX))
    if features is None:
        features = file_features
    elif file_features != features:
        raise LogError(f"{file}: context columns {file_features} differ from the first file's {features}")
    wanted = [c for c in (*REQUIRED, "target_propensity", "round", "position") if c in names] + features
    carry: dict[str, np.ndarray] | None = None
    offset = 0
    for batch in _batches(file, wanted, batch_size):
        cols = _validate(file, batch, offset)
        first_row = offset - (len(carry["reward"]) if carry is not None else 0)  # the file row of cols' first row
        offset += batch.num_rows
        if carry is not None:
            cols = {c: np.concatenate([carry[c], cols[c]]) for c in cols}
        cols, carry = _split_last_round(cols)
        if len(cols["reward"]):
            data = _pivot(file, cols, features, slots, first_row)
            yield ExternalBatch(data, first_round, key)
            first_round += data.n
            key += 1
    if carry is not None and len(carry["reward"]):
        data = _pivot(file, carry, features, slots, offset - len(carry["reward"]))
        yield ExternalBatch(data, first_round, key)
        first_round += data.n
        key += 1


def _is_csv(file: str) -> bool:
    return file.endswith(".csv")


def _columns(file: str) -> list[str]:
    try:
        if _is_csv(file):
            with open_stream(file) as stream, pcsv.open_csv(stream) as reader:
                return list(reader.schema.names)
        with open_file(file) as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise LogError(f"{file}: cannot read: {exc}") from exc


def _batches(file: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    try:
        if _is_csv(file):
            # round ids stay text: a numeric-looking first block must not fix their type for the file
            types = {"round": pa.string()} if "round" in columns else {}
            convert = pcsv.ConvertOptions(include_columns=columns, column_types=types)
            read = pcsv.ReadOptions(block_size=max(1 << 16, batch_size * 64))
            with open_stream(file) as stream, pcsv.open_csv(stream, read_options=read, convert_options=convert) as r:
                yield from r
        else:
            with open_file(file) as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise LogError(f"{file}: cannot read: {exc}") from exc


def _validate(file: str, batch: pa.RecordBatch, offset: int) -> dict[str, np.ndarray]:
    """Columns of a batch as numpy arrays; the first bad value raises ``LogError`` with file, column and row."""
    cols: dict[str, np.ndarray] = {}
    for name in batch.schema.names:
        column = batch.column(name)
        if name in ("action", "round"):
            if column.null_count:
                _bad(file, name, offset, np.asarray(column.is_null()), "is missing")
            if name == "round":  # compared as given: string ids, and 64-bit ids that a float would merge
                values = column.to_numpy(zero_copy_only=False)
                if values.dtype.kind == "f":
                    _bad(file, name, offset, ~np.isfinite(values), "is missing or not finite", values)
                cols[name] = values
            continue
        try:
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise LogError(f"{file}: column {name}: not numeric ({exc})") from exc
        if name == "propensity":
            _bad(file, name, offset, ~((values > 0) & (values <= 1)), "is outside (0, 1]", values)
        elif name == "target_propensity":
            _bad(file, name, offset, ~((values >= 0) & (values <= 1)), "is outside [0, 1]", values)
        elif name == "position":
            whole = np.isfinite(values) & (values >= 0) & (values == np.floor(values))
            _bad(file, name, offset, ~whole, "is not a whole number >= 0", values)
        else:
            _bad(file, name, offset, ~np.isfinite(values), "is missing or not finite", values)
        cols[name] = values
    return cols


def _bad(file: str, column: str, offset: int, bad: np.ndarray, problem: str, values: np.ndarray | None = None) -> None:
    if bad.any():
        row = int(np.argmax(bad))
        shown = "" if values is None else f" ({float(values[row])!r})"
        raise LogError(f"{file}: column {column}: row {offset + row} {problem}{shown}")


def _split_last_round(cols: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Hold back the batch's last round (it may continue in the next batch)."""
    if "round" not in cols or not len(cols["round"]):
        return cols, None
    rounds = cols["round"]
    start = int(np.flatnonzero(np.concatenate([[True], rounds[1:] != rounds[:-1]]))[-1])
    return {c: v[:start] for c, v in cols.items()}, {c: v[start:] for c, v in cols.items()}


def _pivot(file: str, cols: dict[str, np.ndarray], features: list[str], slots: int, first_row: int) -> SlateData:
    """Rows to rounds: n-by-S arrays (positions must be 0, 1, ... within a round); ``first_row``: the file's row."""
    rows = len(cols["reward"])
    if "round" not in cols and "position" not in cols:  # one action per round: no pivot needed
        context = np.stack([cols[f] for f in features], axis=1) if features else np.zeros((rows, 0))
        x = np.zeros((rows, slots, context.shape[1]))
        x[:, 0] = context
        one = np.zeros((rows, slots), dtype=bool)
        one[:, 0] = True

        def slot0(values: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((rows, slots), fill)
            out[:, 0] = values
            return out

        return SlateData(
            slot0(cols["propensity"], 1.0),
            slot0(cols["target_propensity"], 0.0),
            slot0(cols["reward"], 0.0),
            one,
            x,
            x,
        )
    if "round" in cols:
        starts = np.concatenate([[True], cols["round"][1:] != cols["round"][:-1]])
    else:
        starts = np.ones(rows, dtype=bool)
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    rank = np.arange(rows) - first[group]
    position = cols["position"].astype(np.int64) if "position" in cols else np.zeros(rows, dtype=np.int64)
    if (position != rank).any() or (position >= slots).any():
        row = int(np.argmax((position != rank) | (position >= slots)))
        if "position" not in cols:
            raise LogError(
                f"{file}: column round: row {first_row + row} continues a round, but there is no position column "
                "(give each row of a round its position: 0, 1, ...)"
            )
        if position[row] >= slots:
            rule = f"positions must be below {slots}, the number of slots"
        elif "round" not in cols:
            rule = (
                "without a round column every row is its own round, at position 0 (add a round column to group a "
                "slate's rows, or give the position as a context column such as x_position)"
            )
        else:
            rule = "a round's rows must hold positions 0, 1, ... (0-based), in order"
        raise LogError(f"{file}: column position: row {first_row + row} has position {position[row]}; {rule}")
    n = int(group[-1]) + 1 if rows else 0
    mask = np.zeros((n, slots), dtype=bool)
    mask[group, position] = True

    def grid(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((n, slots), fill)
        out[group, position] = values
        return out

    context = np.stack([cols[f] for f in features], axis=1) if features else np.zeros((rows, 0))
    x = np.zeros((n, slots, context.shape[1]))
    x[group, position] = context
    return SlateData(
        logged_propensity=grid(cols["propensity"], 1.0),
        target_propensity=grid(cols["target_propensity"], 0.0),
        reward=grid(cols["reward"], 0.0),
        mask=mask,
        logged_features=x,
        target_features=x,
    )
