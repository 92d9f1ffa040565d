"""Rebuild each logged decision from the log and the index artifact, and score it with a target policy.

Everything comes from what was logged: the candidates in retrieval order, the seed items that defined the query,
the context values in feature order and the emerging rule with its threshold. The index artifact supplies the
content vectors and must be the version named in the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bandits.base import Candidates, Policy
from bandits.emerging import EmergingRule
from bandits.features import build_features
from embeddings.index import IndexArtifact
from offline_eval.base import SlateData
from offline_eval.logs import DecisionLog, LogError


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
            ),
            candidate_positions=positions,
            served=served,
            propensities=np.asarray(log["propensities"][row], dtype=np.float64),
            rewards=np.asarray(log["rewards"][row], dtype=np.float64),
            context=context,
            unit_id=log["unit_id"][row],
        )


def replay(log: DecisionLog, index: IndexArtifact, target: Policy) -> SlateData:
    """The logged slates with ``target``'s conditional probabilities of each logged slot."""
    n = len(log)
    slots = max((len(items) for items in log["item_ids"]), default=0)
    dim = target.feature_dim
    mask = np.zeros((n, slots), dtype=bool)
    logged_p, target_p, reward = np.ones((n, slots)), np.zeros((n, slots)), np.zeros((n, slots))
    logged_x, target_x = np.zeros((n, slots, dim)), np.zeros((n, slots, dim))
    for d in decisions(log, index):
        s = len(d.served)
        dists = target.slot_distributions(d.candidates, d.served)
        mask[d.row, :s] = True
        logged_p[d.row, :s] = d.propensities
        target_p[d.row, :s] = dists[np.arange(s), d.served]
        reward[d.row, :s] = d.rewards
        logged_x[d.row, :s] = d.candidates.features[d.served]
        target_x[d.row, :s] = dists @ d.candidates.features
    return SlateData(logged_p, target_p, reward, mask, logged_x, target_x)
