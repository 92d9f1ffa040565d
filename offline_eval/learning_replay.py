"""Replay of a learning policy: an online learner run over logged decisions in time order.

The learner ranks each logged decision with its current state; rejection sampling keeps the slots it would have
served, and it learns from what it kept, so the kept decisions follow the learner's own online trajectory (Li et
al., 2011, generalized to any logging policy by rejection sampling). Slot ``k`` of decision ``i`` is kept with
probability ``W~_ik / M_k``, where ``W~_ik`` is the prefix ratio of target to logged propensities (as in
:class:`offline_eval.rejection_sampling.RejectionSampling`) and ``M_k = prod_{j<=k} m_j`` with ``m_j`` the largest
``1 / mu`` logged at slot ``j``: a bound fixed before the replay, valid for any target, under which the acceptance
probability can only fall from one slot to the next. One uniform draw per decision is shared by its slots, so
the kept slots of a decision are always a prefix of its slate. Acceptance at slot ``k`` is at most ``1 / M_k`` times
the prefix ratio, so later slots need many more logged decisions (an estimate names any slot nothing was kept
for). The estimate is the mean kept reward per slot,
summed over slots (the estimand of :mod:`offline_eval.base`), with a normal interval that treats the kept slots
as independent draws.

The learner is updated after every ``chunk`` logged decisions with the kept prefixes (the served items, their
rewards and the learner's own probabilities), as Scout's learner applies joined decisions in batches. With a
deterministic learner and uniform logging, slot 0 is kept one time in K: a replay of n logged decisions shows
the learner about n/K decisions. Kept-slot counts and the learning curve are reported so that is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bandits.base import Policy
from embeddings.index import IndexArtifact
from offline_eval.base import Estimate, Terms
from offline_eval.logs import DecisionLog, LogError
from offline_eval.replay import _REPLAY_COLUMNS, _REPLAY_SCHEMA, RebuiltBatch, rebuild
from offline_eval.statistics import Statistics

NAME = "learning_replay"


@dataclass(frozen=True)
class LearningReplay:
    """What a learning policy would have earned online, estimated from the logs.

    Parameters
    ----------
    estimate
        The learner's expected slate reward over its replayed trajectory, with an interval.
    decisions
        Logged decisions read.
    kept
        Decisions of which at least slot 0 was kept (the learner's trajectory length).
    kept_slots
        Kept slots in all.
    updates
        Times the learner was updated.
    curve
        After each update: (kept decisions so far, running estimate).
    """

    estimate: Estimate
    decisions: int
    kept: int
    kept_slots: int
    updates: int
    curve: tuple[tuple[int, float], ...]


def slot_bounds(propensities: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slot, the largest inverse logged propensity (``m_j``; 1 for a slot never served)."""
    safe = np.where(mask, propensities, 1.0)
    if (safe <= 0).any():
        raise LogError("propensities must be positive on served slots")
    return np.asarray((1.0 / safe).max(axis=0, initial=1.0), dtype=np.float64)


def replay_learning(
    batches: Iterable[RebuiltBatch],
    policy: Policy,
    bounds: np.ndarray,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> LearningReplay:
    """Run ``policy`` as an online learner over ``batches`` (in time order), updating it after each batch.

    Parameters
    ----------
    batches
        Rebuilt logged decisions in time order; each batch is one update interval.
    policy
        The learner, in its starting state; it is updated in place.
    bounds
        ``m_j`` per slot for every slot a batch may have (:func:`slot_bounds` over the whole log).
    seed
        Seed of the acceptance draws.
    level
        Interval level.
    progress
        Called with each batch's number of decisions.
    """
    rng = np.random.default_rng(seed)
    bounds = np.asarray(bounds, dtype=np.float64)
    stats = Statistics(len(bounds))
    decisions = kept_decisions = kept_slots = updates = 0
    curve: list[tuple[int, float]] = []
    reward_low, reward_high = np.inf, -np.inf
    for key, batch in enumerate(batches):
        n, s = batch.served.shape
        if s > len(bounds):
            raise ValueError(f"a batch has {s} slots but bounds cover {len(bounds)}")
        dists = policy.replay_distributions(batch.candidates, batch.served)
        mask = batch.served >= 0
        col = np.where(mask, batch.served, 0)
        target = np.where(mask, dists[np.arange(n)[:, None], np.arange(s)[None, :], col], 0.0)
        ratios = np.where(mask, target / np.where(mask, batch.propensities, 1.0), 1.0)
        accept = np.cumprod(ratios, axis=1) / np.cumprod(bounds[:s])
        kept = np.logical_and.accumulate(rng.random((n, 1)) < accept, axis=1)
        num = np.zeros((n, len(bounds)))
        den = np.zeros((n, len(bounds)))
        num[:, :s] = kept * batch.rewards * mask
        den[:, :s] = kept
        stats.add(Terms(num, den), key)
        served_kept = np.where(kept & mask, batch.served, -1)
        rows = np.flatnonzero(served_kept[:, 0] >= 0)
        decisions += n
        kept_decisions += len(rows)
        kept_slots += int((served_kept >= 0).sum())
        if mask.any():
            reward_low = min(reward_low, float(batch.rewards[mask].min()))
            reward_high = max(reward_high, float(batch.rewards[mask].max()))
        if len(rows):
            policy.update_batch(batch.candidates.take(rows), served_kept[rows], batch.rewards[rows], target[rows])
            updates += 1
            curve.append((kept_decisions, stats.value()))
        if progress is not None:
            progress(n)
    if decisions == 0:
        raise LogError("the log has no decisions")
    if kept_decisions == 0:
        raise ValueError(f"no decision was kept out of {decisions}: the learner never agrees with the logger")
    slots = len(bounds)
    estimate = stats.estimate(NAME, (min(0.0, reward_low) * slots, max(0.0, reward_high) * slots), level)
    empty = [str(k) for k in range(slots) if stats.sum_den[k] == 0]
    if empty:  # acceptance falls with each slot (M_k grows): long slates need far more logged decisions
        flag = f"slot(s) {', '.join(empty)}: no decision kept, counted as zero reward (too few logged decisions)"
        estimate = replace(estimate, flags=(*estimate.flags, flag))
    return LearningReplay(estimate, decisions, kept_decisions, kept_slots, updates, tuple(curve))


def replay_learning_log(
    log: DecisionLog,
    index: IndexArtifact,
    policy: Policy,
    chunk: int = 500,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> LearningReplay:
    """:func:`replay_learning` over Scout's logs: decisions sorted by ``decided_at``, ``chunk`` per update."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    order = pc.sort_indices(pa.array(log["decided_at"]))  # stable: ties keep their logged order
    table = pa.Table.from_pydict({name: log[name] for name in _REPLAY_COLUMNS}, schema=_REPLAY_SCHEMA)
    table = table.take(order)
    lengths = np.array([len(p) for p in log["propensities"]])
    width = int(lengths.max(initial=0))
    props = np.ones((len(lengths), width))
    for i, p in enumerate(log["propensities"]):
        props[i, : len(p)] = p
    bounds = slot_bounds(props, np.arange(width)[None, :] < lengths[:, None])
    batches = (rebuild(table.slice(start, chunk), index, start) for start in range(0, table.num_rows, chunk))
    return replay_learning(batches, policy, bounds, seed, level, progress)
