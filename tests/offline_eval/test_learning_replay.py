"""Replay of a learning policy against the ground truth of running it online in the same world."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.base import CandidateBatch, Candidates
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.linucb import LinUCB
from offline_eval.learning_replay import replay_learning, slot_bounds
from offline_eval.replay import RebuiltBatch

K, F, BATCH = 6, 4, 100
THETA = np.array([0.25, -0.2, 0.15, 0.1])


def world(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n decisions of K candidates: features and true click probabilities."""
    x = rng.normal(size=(n, K, F))
    return x, np.clip(0.4 + x @ THETA, 0.02, 0.98)


def learner() -> LinUCB:
    return LinUCB(F, alpha=0.3)


def online(rounds: int, seed: int) -> float:
    """The learner's mean expected reward when it serves ``rounds`` decisions itself, learning every BATCH."""
    rng = np.random.default_rng(seed)
    policy, x, p = learner(), *world(rng, rounds)
    chosen = np.empty((rounds, 1), dtype=np.int64)
    clicks, props, expected = np.empty((rounds, 1)), np.empty((rounds, 1)), np.empty(rounds)
    for t in range(rounds):
        slate = policy.rank(Candidates(x[t], np.zeros(K, dtype=bool)), 1, rng)
        chosen[t], props[t] = slate.indices, slate.propensities
        expected[t] = p[t, chosen[t, 0]]
        clicks[t] = rng.random() < expected[t]
        if (t + 1) % BATCH == 0:
            lo = t + 1 - BATCH
            batch = CandidateBatch(x[lo : t + 1], np.ones((BATCH, K), bool), np.zeros((BATCH, K), bool))
            policy.update_batch(batch, chosen[lo : t + 1], clicks[lo : t + 1], props[lo : t + 1])
    return float(expected.mean())


def logged(n: int, seed: int) -> list[RebuiltBatch]:
    """n decisions served uniformly at random, in chunks of K * BATCH (about BATCH kept per chunk)."""
    rng = np.random.default_rng(seed)
    x, p = world(rng, n)
    served = rng.integers(K, size=(n, 1))
    rewards = (rng.random((n, 1)) < np.take_along_axis(p, served, axis=1)).astype(np.float64)
    chunk = K * BATCH
    return [
        RebuiltBatch(
            CandidateBatch(x[lo : lo + chunk], np.ones((chunk, K), bool), np.zeros((chunk, K), bool)),
            served[lo : lo + chunk],
            np.full((chunk, 1), 1.0 / K),
            rewards[lo : lo + chunk],
        )
        for lo in range(0, n, chunk)
    ]


@pytest.mark.slow
def test_a_replayed_learner_earns_what_it_earns_online() -> None:
    batches = logged(K * 4000, seed=1)
    bounds = slot_bounds(np.full((1, 1), 1.0 / K), np.ones((1, 1), bool))
    result = replay_learning(batches, learner(), bounds, seed=2)
    truth = float(np.mean([online(result.kept, seed) for seed in (10, 11, 12)]))
    static = float(world(np.random.default_rng(0), 20000)[1].mean())  # serving at random, never learning
    e = result.estimate
    assert e.lower <= truth <= e.upper, (e, truth)
    assert truth > static + 0.1 and e.lower > static + 0.05  # it learned, and the replay saw it learn
    assert result.updates == len(batches) and abs(result.kept - 4000) < 4 * np.sqrt(4000)
    values = [v for _, v in result.curve]
    assert values[-1] == pytest.approx(e.value) and values[-1] > values[0]


@pytest.mark.slow
def test_the_interval_covers_the_learners_online_value_at_its_level() -> None:
    """100 logs, each replayed: the 95% interval holds the learner's expected online value about 95% of the time."""
    bounds = slot_bounds(np.full((1, 1), 1.0 / K), np.ones((1, 1), bool))
    results = [replay_learning(logged(K * 1000, seed=100 + s), learner(), bounds, seed=s) for s in range(100)]
    kept = int(np.median([r.kept for r in results]))
    truth = float(np.mean([online(kept, seed=1000 + s) for s in range(100)]))  # over as many decisions as kept
    coverage = np.mean([r.estimate.lower <= truth <= r.estimate.upper for r in results])
    assert 0.88 <= coverage <= 0.99, coverage  # 0.93 here; binomial sd 0.022
    values = np.array([r.estimate.value for r in results])
    assert abs(values.mean() - truth) < 3 * values.std() / np.sqrt(len(values)) + 0.005, (values.mean(), truth)


def test_on_slates_of_varying_length_a_policy_that_does_not_change_is_estimated_without_bias() -> None:
    """Uniform ranking (epsilon 1: whatever it learns) logged by an epsilon-greedy logger, slates of 1-2."""
    slots, n = 2, 6000
    truths, estimates = [], []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        x, p = world(rng, n)
        lengths = rng.integers(1, slots + 1, size=n)
        logger = EpsilonGreedy(F, epsilon=0.6)
        logger.update(x[:200].reshape(-1, F), p[:200].reshape(-1))  # a preference, so logging is far from uniform
        served = np.full((n, slots), -1, dtype=np.int64)
        props, rewards = np.ones((n, slots)), np.zeros((n, slots))
        for i in range(n):
            slate = logger.rank(Candidates(x[i], np.zeros(K, dtype=bool)), int(lengths[i]), rng)
            m = len(slate.indices)
            served[i, :m], props[i, :m] = slate.indices, slate.propensities
            rewards[i, :m] = rng.random(m) < p[i, slate.indices]
        batches = [
            RebuiltBatch(
                CandidateBatch(x[lo : lo + 500], np.ones((500, K), bool), np.zeros((500, K), bool)),
                served[lo : lo + 500],
                props[lo : lo + 500],
                rewards[lo : lo + 500],
            )
            for lo in range(0, n, 500)
        ]
        result = replay_learning(batches, EpsilonGreedy(F, epsilon=1.0), slot_bounds(props, served >= 0), seed=seed)
        estimates.append(result.estimate.value)
        assert not result.estimate.flags, result.estimate.flags
        truths.append(float((lengths * p.mean(axis=1)).mean()))  # uniform slots: each slot's item is uniform
    errors = np.array(estimates) - np.array(truths)
    assert abs(errors.mean()) < 3 * errors.std(ddof=1) / np.sqrt(len(errors)) + 0.01, errors


def test_a_slot_nothing_was_kept_for_is_named() -> None:
    x, p = world(np.random.default_rng(5), 50)
    served = np.tile(np.array([[0, 1, 2]]), (50, 1))
    batch = RebuiltBatch(
        CandidateBatch(x, np.ones((50, K), bool), np.zeros((50, K), bool)),
        served,
        np.tile([1 / 6, 1 / 5, 1 / 4], (50, 1)),
        p[:, :3],
    )
    result = replay_learning([batch], EpsilonGreedy(F, epsilon=1.0), np.array([6.0, 1e6, 1e6]), seed=0)
    assert any("slot(s) 1, 2: no decision kept" in f for f in result.estimate.flags), result.estimate.flags
