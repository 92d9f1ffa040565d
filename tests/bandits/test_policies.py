"""The contract every policy passes: exact propensities, replayable probabilities, state without pickle."""

from collections import Counter

import numpy as np
import pytest

from bandits.base import Candidates, Policy, PolicyStateError
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.linucb import LinUCB
from bandits.registry import POLICIES, create_policy, load_policy

F = 6


def trained(name: str, seed: int = 0) -> Policy:
    params = {"epsilon_greedy": {"epsilon": 0.4}, "linucb": {"alpha": 0.7}}[name]
    policy = create_policy(name, F, params)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, F))
    policy.update(X, X @ rng.normal(size=F) + rng.normal(size=40))
    return policy


def candidates(k: int = 6, seed: int = 1) -> Candidates:
    rng = np.random.default_rng(seed)
    return Candidates(rng.normal(size=(k, F)), rng.random(k) < 0.3)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_propensities_match_empirical_slate_frequencies(name: str) -> None:
    policy, cands = trained(name), candidates()
    rng = np.random.default_rng(2)
    draws = 20000
    first, pairs, logged = Counter(), Counter(), {}
    for _ in range(draws):
        slate = policy.rank(cands, 3, rng)
        a, b = int(slate.indices[0]), int(slate.indices[1])
        first[a] += 1
        pairs[(a, b)] += 1
        logged[(a, b)] = (slate.propensities[0], slate.propensities[0] * slate.propensities[1])
    for (a, b), (p_first, p_pair) in logged.items():
        for count, p in ((first[a], p_first), (pairs[(a, b)], p_pair)):
            se = np.sqrt(p * (1 - p) / draws)
            assert abs(count / draws - p) <= 4 * se + 1e-12, (name, a, b, count / draws, p)
    assert sum(p for _, p in logged.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_slot_distributions_reproduce_logged_propensities(name: str) -> None:
    policy, cands = trained(name), candidates()
    slate = policy.rank(cands, 4, np.random.default_rng(3))
    dists = policy.slot_distributions(cands, slate.indices)
    assert dists.shape == (4, cands.count)
    np.testing.assert_allclose(dists.sum(axis=1), 1.0)
    np.testing.assert_array_equal(dists[np.arange(4), slate.indices], slate.propensities)
    for k in range(1, 4):
        assert (dists[k, slate.indices[:k]] == 0).all(), "an item was offered twice"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_seed_same_slate(name: str) -> None:
    policy, cands = trained(name), candidates()
    a = policy.rank(cands, 3, np.random.default_rng(9))
    b = policy.rank(cands, 3, np.random.default_rng(9))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_round_trips_without_pickle(name: str) -> None:
    policy = trained(name)
    policy.version = 7
    data = policy.to_bytes()
    loaded = load_policy(data)
    assert type(loaded) is type(policy) and loaded.version == 7 and loaded.params() == policy.params()
    X = candidates().features
    np.testing.assert_allclose(loaded.scores(X), policy.scores(X))
    with np.load(__import__("io").BytesIO(data), allow_pickle=False) as npz:
        assert all(npz[key].dtype != object for key in npz.files)


def test_corrupt_or_foreign_snapshots_are_rejected() -> None:
    with pytest.raises(PolicyStateError, match="not a Scout policy snapshot"):
        load_policy(b"garbage")
    with pytest.raises(PolicyStateError, match="expected 'linucb'"):
        LinUCB.from_bytes(trained("epsilon_greedy").to_bytes())
    bigger = create_policy("linucb", F + 1, {})
    with pytest.raises(PolicyStateError, match="expected dimension"):
        bigger._load_state(trained("linucb")._state())


def test_deterministic_policy_logs_one_and_splits_ties() -> None:
    fresh = LinUCB(F, alpha=0.0)
    cands = candidates()
    slate = fresh.rank(cands, 2, np.random.default_rng(0))
    # An untrained model scores every candidate 0: the first slot is a uniform tie among all six.
    np.testing.assert_allclose(slate.propensities, [1 / 6, 1 / 5])
    greedy = trained("linucb")
    assert greedy.rank(cands, 3, np.random.default_rng(0)).probability == 1.0


def test_epsilon_greedy_mixes_uniform_exploration() -> None:
    policy = EpsilonGreedy(F, epsilon=0.3)
    scores = np.array([0.0, 2.0, 1.0, 2.0])
    p = policy.slot_probabilities(scores, np.array([True, True, True, False]))
    np.testing.assert_allclose(p, [0.1, 0.8, 0.1, 0.0])


def test_linucb_learns_the_best_item() -> None:
    rng = np.random.default_rng(4)
    theta = rng.normal(size=F)
    items = rng.normal(size=(8, F))
    policy = LinUCB(F, alpha=0.5)
    for _ in range(300):
        slate = policy.rank(Candidates(items, np.zeros(8, bool)), 1, rng)
        chosen = items[slate.indices]
        policy.update(chosen, chosen @ theta + 0.1 * rng.normal(size=1))
    best = int(np.argmax(items @ theta))
    assert policy.rank(Candidates(items, np.zeros(8, bool)), 1, rng).indices[0] == best


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(F, epsilon=1.5)
    with pytest.raises(ValueError, match="unknown policy"):
        create_policy("nope", F, {})
    with pytest.raises(ValueError, match="bad parameters"):
        create_policy("linucb", F, {"alpah": 1.0})
    with pytest.raises(ValueError, match="emerging"):
        Candidates(np.zeros((3, F)), np.zeros(2, bool))
    with pytest.raises(ValueError, match="feature columns"):
        LinUCB(F).rank(Candidates(np.zeros((3, F + 1)), np.zeros(3, bool)), 1, np.random.default_rng(0))
