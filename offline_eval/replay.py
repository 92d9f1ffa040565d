"""Rebuild each logged decision from the log and the index artifact, and score it with a target policy.

Everything comes from what was logged: the candidates in retrieval order, the seed items that defined the query,
the context values in feature order and the emerging rule with its threshold. The index artifact supplies the
content vectors and must be the version named in the log.
"""

from __future__ import annotations

import json
import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from bandits.base import CandidateBatch, Candidates, Policy
from bandits.emerging import EmergingRule
from bandits.features import build_features
from embeddings.index import IndexArtifact
from offline_eval.base import SlateData, SlateFeatureParts
from offline_eval.emerging_metrics import CandidateInfo
from offline_eval.logs import SCHEMA, DecisionLog, LogError


@dataclass(frozen=True)
class LoggedDecision:
    """One decision rebuilt: its candidates, the served candidate indices and the logged values per slot."""

    row: int
    candidates: Candidates
    candidate_positions: np.ndarray
    served: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    context: np.ndarray
    unit_id: str


def decisions(log: DecisionLog, index: IndexArtifact) -> Iterator[LoggedDecision]:
    """Rebuild every decision of ``log`` against ``index``; mismatches raise ``LogError`` naming the row."""
    versions = set(log["index_version"])
    if versions - {index.version}:
        raise LogError(f"column index_version: the log names {sorted(versions)}, the index artifact is {index.version}")
    for row in range(len(log)):
        try:
            positions = index.positions(log["candidate_ids"][row])
            seeds = index.positions(log["seed_item_ids"][row])
        except KeyError as exc:
            raise LogError(f"row {row}: {exc.args[0]} is not in index {index.version}") from None
        where = {item: i for i, item in enumerate(log["candidate_ids"][row])}
        try:
            served = np.array([where[i] for i in log["item_ids"][row]], dtype=np.int64)
        except KeyError as exc:
            raise LogError(f"column item_ids: row {row} serves {exc.args[0]!r}, which is not a candidate") from None
        rule = EmergingRule(**json.loads(log["emerging_rule"][row]))
        context = np.asarray(log["context_values"][row], dtype=np.float64)
        vectors = index.vectors[positions]
        yield LoggedDecision(
            row=row,
            candidates=Candidates(
                features=build_features(index.query(seeds), vectors, context),
                emerging=rule.flags(index.creator_popularity[positions], index.creator_age_days[positions]),
                item_ids=index.item_ids[positions],
                creator_ids=index.creator_ids[positions],
            ),
            candidate_positions=positions,
            served=served,
            propensities=np.asarray(log["propensities"][row], dtype=np.float64),
            rewards=np.asarray(log["rewards"][row], dtype=np.float64),
            context=context,
            unit_id=log["unit_id"][row],
        )


def replay(
    log: DecisionLog, index: IndexArtifact, target: Policy, chunk: int = 8192, threads: int | None = None
) -> SlateData:
    """The logged slates with ``target``'s conditional probabilities of each logged slot (vectorized).

    ``chunk`` decisions are rebuilt and replayed at a time, ``threads`` chunks at once (default: the CPU count).
    """
    parts = [r.data for r in replay_batches(_slices(log, chunk), index, target, threads)]
    if not parts:
        raise LogError("the log has no decisions")
    return concat(parts)


def replay_with_distributions(
    log: DecisionLog, index: IndexArtifact, target: Policy, chunk: int = 8192, threads: int | None = None
) -> tuple[SlateData, list[np.ndarray], list[CandidateInfo]]:
    """:func:`replay`, plus each chunk's n-by-S-by-K target distributions and candidate facts (for exposure)."""
    parts, dists, infos = [], [], []
    for r in replay_batches(_slices(log, chunk), index, target, threads):
        parts.append(r.data)
        dists.append(r.distributions)
        c = r.batch.candidates
        assert c.creator_ids is not None
        infos.append(CandidateInfo(c.creator_ids, c.emerging, c.valid, r.batch.served))
    if not parts:
        raise LogError("the log has no decisions")
    return concat(parts), dists, infos


@dataclass(frozen=True)
class Replayed:
    """One replayed batch: the rebuilt decisions, the target's n-by-S-by-K slot distributions, the SlateData."""

    batch: RebuiltBatch
    distributions: np.ndarray
    data: SlateData


def replay_batches(
    tables: Iterable[tuple[int, pa.Table | pa.RecordBatch]],
    index: IndexArtifact,
    target: Policy,
    threads: int | None = None,
) -> Iterator[Replayed]:
    """Rebuild and replay batches of log rows, in order, on ``threads`` threads.

    With one thread, one :class:`Replayed` comes back per batch; with more, each batch is cut into pieces of at most
    :data:`THREAD_PIECE` rows and one comes back per piece, so that a short last batch does not leave a thread idle.

    Parameters
    ----------
    tables
        ``(offset, rows)`` pairs: Arrow rows of the decision log (the columns :func:`replay_table` needs) and the
        row number of their first row, for error messages.
    index
        The index artifact the decisions were made with.
    target
        The policy to replay (its scoring must be read-only, as every Scout policy's batched path is).
    threads
        Pieces worked on at once (default: the CPU count). numpy releases the GIL in the array work, so threads
        use the cores; while more than one runs, BLAS is held to one thread per call (process-wide, until the
        iterator is exhausted or closed). At most twice this many pieces, and the batch being cut, are in memory.
    """

    def work(item: tuple[int, pa.Table | pa.RecordBatch]) -> Replayed:
        offset, rows = item
        return _replay_rows(rows, index, target, offset)

    workers = (os.cpu_count() or 1) if threads is None else threads
    if workers < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if workers == 1 or not target.batched:
        yield from map(work, tables)
        return
    with ThreadPoolExecutor(workers) as pool, threadpool_limits(1):
        pending: deque[Future[Replayed]] = deque()
        for item in _pieces(tables, THREAD_PIECE):
            pending.append(pool.submit(work, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pieces(
    tables: Iterable[tuple[int, pa.Table | pa.RecordBatch]], rows: int
) -> Iterator[tuple[int, pa.Table | pa.RecordBatch]]:
    """The batches cut into pieces of at most ``rows`` rows (zero-copy slices), so that threads share the work."""
    for offset, table in tables:
        for start in range(0, table.num_rows, rows):
            yield offset + start, table.slice(start, rows)


def _slices(log: DecisionLog, chunk: int) -> Iterator[tuple[int, pa.Table]]:
    table = pa.Table.from_pydict({name: log[name] for name in _REPLAY_COLUMNS}, schema=_REPLAY_SCHEMA)
    for start in range(0, table.num_rows, chunk):
        yield start, table.slice(start, chunk)


def replay_table(table: pa.Table | pa.RecordBatch, index: IndexArtifact, target: Policy, offset: int = 0) -> SlateData:
    """Replay a batch of log rows (Arrow, the log schema's columns) with ``target``, without a per-decision loop.

    Parameters
    ----------
    table
        Rows of the decision log; needs the columns ``candidate_ids``, ``seed_item_ids``, ``item_ids``,
        ``propensities``, ``rewards``, ``context_values``, ``emerging_rule`` and ``index_version``.
    index
        The index artifact the decisions were made with.
    target
        The policy to replay.
    offset
        Row number of the batch's first row, for error messages.
    """
    return _replay_rows(table, index, target, offset).data


def _replay_rows(table: pa.Table | pa.RecordBatch, index: IndexArtifact, target: Policy, offset: int) -> Replayed:
    batch = rebuild(table, index, offset)
    dists = target.replay_distributions(batch.candidates, batch.served)
    return Replayed(batch, dists, batch.slate_data(dists))


@dataclass(frozen=True)
class RebuiltBatch:
    """n decisions rebuilt at once: candidates padded to K, served columns padded to S with -1."""

    candidates: CandidateBatch
    served: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray

    def slate_data(self, dists: np.ndarray) -> SlateData:
        """SlateData from the target's n-by-S-by-K slot distributions.

        When the batch has feature parts, so does the SlateData (:class:`~offline_eval.base.SlateFeatureParts`:
        the logged item vectors and the target's expected ones), and the n-by-S-by-F features are built only by
        what reads them.
        """
        mask = self.served >= 0
        n, s = mask.shape
        col = np.where(mask, self.served, 0)
        rows = np.arange(n)[:, None]
        target_p = np.where(mask, dists[rows, np.arange(s)[None, :], col], 0.0)
        parts = self.candidates.parts
        if parts is None:
            features = self.candidates.features
            logged_x = features[rows, col] * mask[:, :, None]
            target_x = np.einsum("nsk,nkf->nsf", dists, features)
            return SlateData(self.propensities, target_p, self.rewards, mask, logged_x, target_x)
        factored = SlateFeatureParts(
            parts.query, parts.context, parts.items[rows, col], dists @ parts.items, dists.sum(axis=2)
        )
        return SlateData(self.propensities, target_p, self.rewards, mask, None, None, parts=factored)


def rebuild(table: pa.Table | pa.RecordBatch, index: IndexArtifact, offset: int = 0) -> RebuiltBatch:
    """Rebuild a batch of decisions against ``index`` with array operations; problems raise ``LogError``."""
    n = table.num_rows
    versions = set(pc.unique(table.column("index_version")).to_pylist())
    if versions - {index.version}:
        raise LogError(f"column index_version: the log names {sorted(versions)}, the index artifact is {index.version}")
    known = _known_ids(index)
    cand_pos, cand_len = _positions(table.column("candidate_ids"), known, "candidate_ids", index, offset)
    seed_pos, seed_len = _positions(table.column("seed_item_ids"), known, "seed_item_ids", index, offset)
    item_pos, item_len = _positions(table.column("item_ids"), known, "item_ids", index, offset)
    k, s = int(cand_len.max(initial=1)), int(item_len.max(initial=0))
    positions, valid = _pad(cand_pos, cand_len, k, 0)
    served_pos, filled = _pad(item_pos, item_len, s, -1)
    match = (positions[:, None, :] == served_pos[:, :, None]) & valid[:, None, :]
    found = match.any(axis=2)
    if (filled & ~found).any():
        row = int(np.argmax((filled & ~found).any(axis=1)))
        raise LogError(f"column item_ids: row {offset + row} serves an item that is not one of its candidates")
    served = np.where(filled, match.argmax(axis=2), -1).astype(np.int64)
    emerging = np.zeros((n, k), dtype=bool)
    rules = np.asarray(table.column("emerging_rule").to_pylist(), dtype=object)
    for text in set(rules.tolist()):
        rows = rules == text
        rule = EmergingRule(**json.loads(text))
        emerging[rows] = rule.flags(index.creator_popularity[positions[rows]], index.creator_age_days[positions[rows]])
    props, _ = _pad(*_flat(table.column("propensities")), s, 1.0)
    rewards, _ = _pad(*_flat(table.column("rewards")), s, 0.0)
    candidates = CandidateBatch.from_parts(
        queries(index, seed_pos, seed_len),
        index.vectors[positions],
        context_matrix(table, offset),
        valid,
        emerging & valid,
        _ids(index.item_ids, positions, valid),
        _ids(index.creator_ids, positions, valid),
    )
    return RebuiltBatch(candidates, served, props, rewards)


def _ids(ids: np.ndarray, positions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """n-by-K object array of ids, None in padding cells."""
    out = np.asarray(ids, dtype=object).take(positions)
    if not valid.all():
        out[~valid] = None
    return out


def queries(index: IndexArtifact, seed_pos: np.ndarray, seed_len: np.ndarray) -> np.ndarray:
    """The n query vectors: the normalized mean of each decision's seed vectors (``index.query`` row for row)."""
    n = len(seed_len)
    vectors = index.vectors
    sums = np.zeros((n, vectors.shape[1]))
    filled = seed_len > 0
    # seed vectors added in order, as index.query's mean does (the same float64 sums)
    if n and filled.all() and (seed_len == seed_len[0]).all():
        sums = vectors[seed_pos].reshape(n, int(seed_len[0]), -1).sum(axis=1, dtype=np.float64)
    elif filled.any():
        starts = (np.cumsum(seed_len) - seed_len)[filled]
        sums[filled] = np.add.reduceat(vectors[seed_pos].astype(np.float64), starts, axis=0)
    means = np.where(seed_len[:, None] > 0, sums / np.maximum(seed_len, 1)[:, None], 0.0)
    if (seed_len == 0).any():
        means[seed_len == 0] = index.query(np.zeros(0, dtype=np.int64))
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.where(norms > 0, means / np.where(norms > 0, norms, 1.0), means).astype(np.float32)


def context_matrix(table: pa.Table | pa.RecordBatch, offset: int = 0) -> np.ndarray:
    """The n-by-C logged context values; every decision of a batch must log the same number C."""
    n = table.num_rows
    values, lengths = _flat(table.column("context_values"))
    if n and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise LogError(
            f"column context_values: row {offset + row} has {lengths[row]} values, row {offset} has {lengths[0]}"
        )
    return np.asarray(values, dtype=np.float64).reshape(n, -1 if n else 0)


def concat(parts: list[SlateData]) -> SlateData:
    """One SlateData from several, padded to the most slots (features, or their parts, to the same F)."""
    s = max(p.slots for p in parts)

    def pad(a: np.ndarray, fill: float) -> np.ndarray:
        if a.shape[1] == s:
            return a
        width = [(0, 0), (0, s - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, width, constant_values=fill)

    head = (
        np.concatenate([pad(p.logged_propensity, 1.0) for p in parts]),
        np.concatenate([pad(p.target_propensity, 0.0) for p in parts]),
        np.concatenate([pad(p.reward, 0.0) for p in parts]),
        np.concatenate([pad(p.mask, False) for p in parts]),
    )
    factored = [p.parts for p in parts if p.parts is not None and not p.features_built]
    if len(factored) == len(parts):
        joined = SlateFeatureParts(
            np.concatenate([f.query for f in factored]),
            np.concatenate([f.context for f in factored]),
            np.concatenate([pad(f.logged_items, 0.0) for f in factored]),
            np.concatenate([pad(f.target_items, 0.0) for f in factored]),
            np.concatenate([pad(f.target_mass, 0.0) for f in factored]),
        )
        return SlateData(*head, None, None, parts=joined)
    return SlateData(
        *head,
        np.concatenate([pad(p.logged_features, 0.0) for p in parts]),
        np.concatenate([pad(p.target_features, 0.0) for p in parts]),
    )


#: Rows per piece of work when batches are replayed on several threads (smaller pieces balance the threads).
THREAD_PIECE = 2048

_KNOWN: weakref.WeakKeyDictionary[IndexArtifact, pa.Array] = weakref.WeakKeyDictionary()


def _known_ids(index: IndexArtifact) -> pa.Array:
    """The index's item ids as an Arrow array (built once per index)."""
    if index not in _KNOWN:
        _KNOWN[index] = pa.array(index.item_ids.astype(str))
    return _KNOWN[index]


def _flat(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row lengths of a list column (nulls count as empty)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return pc.list_flatten(array).to_numpy(zero_copy_only=False), lengths


def _positions(
    column: pa.ChunkedArray | pa.Array, known: pa.Array, name: str, index: IndexArtifact, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(array)
    if len(values) * 4 < len(known):  # index_in hashes all of `known` on every call: 0.17 s for 1M items
        try:
            return index.positions(values.to_pylist()), lengths
        except KeyError:
            pass  # an unknown id: the path below names its row
    found = pc.index_in(values, value_set=known)
    if found.null_count:
        first = int(np.argmax(found.is_null().to_numpy(zero_copy_only=False)))
        row = int(np.searchsorted(np.cumsum(lengths), first, side="right"))
        raise LogError(f"column {name}: row {offset + row}: {values[first].as_py()!r} is not in index {index.version}")
    return found.to_numpy(zero_copy_only=False).astype(np.int64), lengths


def _pad(values: np.ndarray, lengths: np.ndarray, width: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``values`` (split by ``lengths``) padded to ``width``, and the mask of real cells."""
    n = len(lengths)
    mask = np.arange(width)[None, :] < lengths[:, None]
    out = np.full((n, width), fill, dtype=np.asarray(values).dtype if len(values) else np.float64)
    out[mask] = values
    return out, mask


_REPLAY_COLUMNS = (
    "index_version",
    "candidate_ids",
    "seed_item_ids",
    "item_ids",
    "propensities",
    "rewards",
    "context_values",
    "emerging_rule",
)
_REPLAY_SCHEMA = pa.schema([SCHEMA.field(name) for name in _REPLAY_COLUMNS])
