"""Rebuild only the served items of a batch of logged decisions, with array operations (the learner's path).

A learner needs the features of the items a decision served, not of all K candidates, so this builds an n-by-S
:class:`~bandits.base.CandidateBatch` whose columns are the served slots in order: ``served[i, s] = s`` for a
filled slot and -1 for padding. Row for row the features equal those :func:`offline_eval.replay.decisions` builds
for the served candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bandits.base import CandidateBatch
from bandits.features import build_features_batch
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, LogError
from offline_eval.replay import _flat, _known_ids, _pad, _positions, context_matrix, queries

#: The log columns :func:`served_batch` reads.
SERVED_COLUMNS = ("index_version", "seed_item_ids", "item_ids", "propensities", "rewards", "context_values")
SERVED_SCHEMA = pa.schema([SCHEMA.field(name) for name in SERVED_COLUMNS])


@dataclass(frozen=True)
class ServedBatch:
    """n decisions' served items: candidates n by S (the served slots), slot columns, propensities and rewards."""

    candidates: CandidateBatch
    served: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray


def served_batch(table: pa.Table | pa.RecordBatch, index: IndexArtifact, offset: int = 0) -> ServedBatch:
    """Rebuild the served items of a batch of log rows against ``index``; problems raise ``LogError``.

    Parameters
    ----------
    table
        Rows of the decision log with the columns :data:`SERVED_COLUMNS`; every row serves at least one item.
    index
        The index artifact the decisions were made with.
    offset
        Row number of the batch's first row, for error messages.
    """
    n = table.num_rows
    versions = set(pc.unique(table.column("index_version")).to_pylist())
    if versions - {index.version}:
        raise LogError(f"column index_version: the log names {sorted(versions)}, the index artifact is {index.version}")
    known = _known_ids(index)
    seed_pos, seed_len = _positions(table.column("seed_item_ids"), known, "seed_item_ids", index, offset)
    item_pos, item_len = _positions(table.column("item_ids"), known, "item_ids", index, offset)
    if n and (item_len == 0).any():
        raise LogError(f"column item_ids: row {offset + int(np.argmax(item_len == 0))} serves no item")
    s = int(item_len.max(initial=1))
    positions, filled = _pad(item_pos, item_len, s, 0)
    context = context_matrix(table, offset)
    features = build_features_batch(queries(index, seed_pos, seed_len), index.vectors[positions], context)
    props, _ = _pad(*_flat(table.column("propensities")), s, 1.0)
    rewards, _ = _pad(*_flat(table.column("rewards")), s, 0.0)
    ids = np.empty((n, s), dtype=object)
    creators = np.empty((n, s), dtype=object)
    ids[filled] = index.item_ids[positions[filled]]
    creators[filled] = index.creator_ids[positions[filled]]
    candidates = CandidateBatch(features, filled, np.zeros((n, s), dtype=bool), ids, creators)
    served = np.where(filled, np.arange(s)[None, :], -1).astype(np.int64)
    return ServedBatch(candidates, served, np.asarray(props, dtype=np.float64), np.asarray(rewards, dtype=np.float64))
