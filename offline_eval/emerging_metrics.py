"""Emerging-creator metrics of a target policy, estimated counterfactually from the logs.

For each logged decision and slot k, the target's distribution over the candidates given the logged prefix is
known exactly (replay), so its expected exposure of each candidate at slot k is too; reweighting slot k by the
prefix weight ``W_{k-1}`` of the slots before it makes the sum over decisions an unbiased estimate of the
target's own exposure (the same argument as DR's baseline term, with no model). Reward on emerging items is the
IPS estimate of the reward earned on slots that show an emerging creator's item.

Reported per policy: emerging exposure share (expected share of slots that show an emerging creator), reward on
emerging items (expected per slate), distinct creators surfaced (creators whose expected exposure over the log is
at least one slot) and the Gini coefficient of exposure across the creators that appeared among the candidates.
For the logging policy the same figures are computed from what was actually served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offline_eval.base import SlateData


@dataclass(frozen=True)
class EmergingMetrics:
    """Counterfactual emerging-creator and exposure metrics of one policy on one log.

    Parameters
    ----------
    exposure_share
        Expected share of served slots that show an emerging creator's item.
    emerging_reward
        Expected reward per slate earned on emerging creators' items.
    distinct_creators
        Creators whose expected exposure over the log is at least one slot.
    exposure_gini
        Gini coefficient of expected exposure across the creators among the candidates (0 even, 1 concentrated).
    """

    exposure_share: float
    emerging_reward: float
    distinct_creators: int
    exposure_gini: float


class CandidateInfo:
    """What the metrics need about the candidates of a chunk of decisions: creators, flags and served columns."""

    def __init__(self, creator_ids: np.ndarray, emerging: np.ndarray, valid: np.ndarray, served: np.ndarray) -> None:
        self.creator_ids, self.emerging, self.valid, self.served = creator_ids, emerging, valid, served


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 when all are equal or there are none)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        return 0.0
    n = x.size
    return float((2.0 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def emerging_metrics(
    data: SlateData, dists: Sequence[np.ndarray] | None, chunks: Sequence[CandidateInfo]
) -> EmergingMetrics:
    """The metrics of the target whose slot distributions are ``dists`` (one n-by-S-by-K array per chunk).

    ``dists=None`` computes them for the logging policy from the served items. ``data`` holds the chunks' rows in
    order, padded to its S slots.
    """
    all_creators = np.concatenate([c.creator_ids[c.valid] for c in chunks]).astype(str)
    names, _ = np.unique(all_creators, return_inverse=True)
    exposure = np.zeros(len(names))
    emerging_slots, slots = 0.0, 0.0
    previous = data.previous_weights()
    start = 0
    for i, chunk in enumerate(chunks):
        n, k = chunk.valid.shape
        rows = slice(start, start + n)
        s = chunk.served.shape[1]
        codes = np.full((n, k), -1)
        codes[chunk.valid] = np.searchsorted(names, chunk.creator_ids[chunk.valid].astype(str))
        if dists is None:
            filled = chunk.served >= 0
            col = np.where(filled, chunk.served, 0)
            shown = np.zeros((n, s, k))
            r, c = np.nonzero(filled)
            shown[r, c, col[r, c]] = 1.0
            weight = filled.astype(np.float64)
        else:
            shown = dists[i]
            weight = previous[rows, :s]
        per_candidate = np.einsum("ns,nsk->nk", weight, shown)
        np.add.at(exposure, codes[chunk.valid], per_candidate[chunk.valid])
        emerging_slots += float((per_candidate * chunk.emerging).sum())
        slots += float(np.einsum("ns,nsk->", weight, shown))
        start += n
    if dists is None:
        served_emerging = _served_emerging(chunks, data)
        reward = float((data.reward * served_emerging).sum(axis=1).mean()) if data.n else 0.0
    else:
        reward = float((data.prefix_weights() * data.reward * _served_emerging(chunks, data)).sum(axis=1).mean())
    return EmergingMetrics(
        exposure_share=emerging_slots / slots if slots else 0.0,
        emerging_reward=reward,
        distinct_creators=int((exposure >= 1.0 - 1e-9).sum()),
        exposure_gini=gini(exposure),
    )


def _served_emerging(chunks: Sequence[CandidateInfo], data: SlateData) -> np.ndarray:
    """n-by-S: the logged item at each slot is an emerging creator's."""
    out = np.zeros(data.mask.shape)
    start = 0
    for chunk in chunks:
        n, s = chunk.served.shape
        filled = chunk.served >= 0
        col = np.where(filled, chunk.served, 0)
        out[start : start + n, :s] = np.take_along_axis(chunk.emerging, col, axis=1) & filled
        start += n
    return out
