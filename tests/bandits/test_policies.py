"""The contract every policy passes: exact propensities, replayable probabilities, state without pickle."""

import io
import math
from collections import Counter

import numpy as np
import pytest

from bandits.base import CandidateBatch, Candidates, Policy, PolicyStateError
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.linucb import LinUCB
from bandits.registry import POLICIES, create_policy, load_policy

F = 6
K = 6

# Every registered policy appears here at least once; "ids" cases exercise the item/creator terms and optimism.
CASES = {
    "epsilon_greedy": ("epsilon_greedy", {"epsilon": 0.4}),
    "softmax": ("softmax", {"temperature": 0.5}),
    "linucb_floor": ("linucb", {"alpha": 0.7, "floor": 0.3}),
    "linucb": ("linucb", {"alpha": 0.7}),
    "thompson": ("thompson", {"scale": 1.0, "draws": 40}),
    "thompson_ids": ("thompson", {"scale": 1.0, "draws": 40, "arm_buckets": 64, "floor": 0.1}),
    "softmax_exposure": (
        "softmax",
        {"temperature": 0.3, "arm_buckets": 64, "optimism": 0.5, "emerging_slots": 1, "emerging_weight": 0.2},
    ),
    "linucb_quota": ("linucb", {"alpha": 0.5, "arm_buckets": 64, "emerging_share": 0.5, "floor": 0.2}),
    "vw_epsilon": ("vw", {"exploration": "epsilon", "epsilon": 0.2}),
    "vw_softmax": ("vw", {"exploration": "softmax", "lam": 2.0}),
    "vw_bag": ("vw", {"exploration": "bag", "bag": 3, "epsilon": 0.1, "floor": 0.1}),
    "vw_squarecb": ("vw", {"exploration": "squarecb"}),
    "vw_cover": ("vw", {"exploration": "cover", "cover": 2, "emerging_slots": 1}),
}


def test_every_registered_policy_has_a_contract_case() -> None:
    assert {name for name, _ in CASES.values()} >= set(POLICIES)


def trained(case: str, seed: int = 0) -> Policy:
    name, params = CASES[case]
    policy = create_policy(name, F, params)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, F))
    y = X @ rng.normal(size=F) + rng.normal(size=40)
    policy.update_batch(
        CandidateBatch(X[:, None, :], np.ones((40, 1), bool), np.zeros((40, 1), bool), ids(40, 1), ids(40, 1, "c")),
        np.zeros((40, 1), dtype=np.int64),
        y[:, None],
    )
    return policy


def ids(n: int, k: int, prefix: str = "i") -> np.ndarray:
    return np.array([[f"{prefix}{(i * k + j) % 7}" for j in range(k)] for i in range(n)], dtype=object)


def candidates(k: int = K, seed: int = 1) -> Candidates:
    rng = np.random.default_rng(seed)
    emerging = np.zeros(k, bool)
    emerging[[1, 4]] = True
    return Candidates(rng.normal(size=(k, F)), emerging, ids(1, k)[0], ids(1, k, "c")[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_propensities_match_empirical_slate_frequencies(case: str) -> None:
    policy, cands = trained(case), candidates()
    rng = np.random.default_rng(2)
    draws = 12000
    first, pairs, logged = Counter(), Counter(), {}
    for _ in range(draws):
        slate = policy.rank(cands, 3, rng)
        a, b = int(slate.indices[0]), int(slate.indices[1])
        first[a] += 1
        pairs[(a, b)] += 1
        logged[(a, b)] = (slate.propensities[0], slate.propensities[0] * slate.propensities[1])
    for (a, b), (p_first, p_pair) in logged.items():
        for count, p in ((first[a], p_first), (pairs[(a, b)], p_pair)):
            se = np.sqrt(max(p, 1 / draws) * (1 - p) / draws)  # a floor for rare slates
            assert abs(count / draws - p) <= 4 * se + 1e-12, (case, a, b, count / draws, p)
    assert sum(p for _, p in logged.values()) == pytest.approx(1.0, abs=2e-3)  # unseen slates are rare


@pytest.mark.parametrize("case", sorted(CASES))
def test_slot_distributions_reproduce_logged_propensities(case: str) -> None:
    policy, cands = trained(case), candidates()
    slate = policy.rank(cands, 4, np.random.default_rng(3))
    dists = policy.slot_distributions(cands, slate.indices)
    assert dists.shape == (4, cands.count)
    np.testing.assert_allclose(dists.sum(axis=1), 1.0)
    np.testing.assert_array_equal(dists[np.arange(4), slate.indices], slate.propensities)
    for k in range(1, 4):
        assert (dists[k, slate.indices[:k]] == 0).all(), "an item was offered twice"


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_distributions_equal_slot_distributions_row_by_row(case: str) -> None:
    policy = trained(case)
    rng = np.random.default_rng(5)
    n, k, s = 7, K + 2, 4
    valid = np.ones((n, k), bool)
    valid[2, 5:] = False  # padding in the middle of the batch
    valid[4, [0, 3]] = False
    emerging = rng.random((n, k)) < 0.3
    batch = CandidateBatch(rng.normal(size=(n, k, F)), valid, emerging, ids(n, k), ids(n, k, "c"))
    served = np.full((n, s), -1, dtype=np.int64)
    for i in range(n):
        cands, cols = batch.row(i)
        slate = policy.rank(cands, s - (i % 2), rng)  # some decisions serve fewer slots
        served[i, : len(slate.indices)] = cols[slate.indices]
    got = policy.replay_distributions(batch, served)
    assert got.shape == (n, s, k)
    for i in range(n):
        cands, cols = batch.row(i)
        filled = served[i] >= 0
        want = policy.slot_distributions(cands, np.searchsorted(cols, served[i, filled]))
        np.testing.assert_allclose(got[i, filled][:, cols], want, atol=1e-12)
        assert (got[i, ~filled] == 0).all() and (got[i][:, ~valid[i]] == 0).all()
    # The row-by-row default of the base class agrees with the vectorized path.
    policy.batched = False
    np.testing.assert_allclose(policy.replay_distributions(batch, served), got, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_same_slate(case: str) -> None:
    policy, cands = trained(case), candidates()
    a = policy.rank(cands, 3, np.random.default_rng(9))
    b = policy.rank(cands, 3, np.random.default_rng(9))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_round_trips_without_pickle(case: str) -> None:
    policy = trained(case)
    policy.version = 7
    data = policy.to_bytes()
    loaded = load_policy(data)
    assert type(loaded) is type(policy) and loaded.version == 7 and loaded.params() == policy.params()
    cands = candidates()
    served = np.array([0, 2, 1])
    np.testing.assert_allclose(loaded.slot_distributions(cands, served), policy.slot_distributions(cands, served))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert all(npz[key].dtype != object for key in npz.files)


@pytest.mark.parametrize("case", ["linucb_floor", "thompson_ids", "linucb_quota"])
def test_floor_gives_every_available_candidate_a_minimum_probability(case: str) -> None:
    policy, cands = trained(case), candidates()
    floor = policy.exposure.floor
    slate = policy.rank(cands, 4, np.random.default_rng(0))
    dists = policy.slot_distributions(cands, slate.indices)
    for slot in range(4):
        left = K - slot
        offered = np.setdiff1d(np.arange(K), slate.indices[:slot])
        assert (dists[slot, offered] >= floor / left - 1e-12).all()


def test_emerging_quota_fills_the_last_slots_when_needed() -> None:
    policy = LinUCB(F, alpha=0.0)
    policy.update(np.eye(F), np.arange(F, dtype=float))  # candidate j scores j: the best are not emerging
    emerging = np.array([True, True, False, False, False, False])
    cands = Candidates(np.eye(F), emerging)
    plain = policy.rank(cands, 3, np.random.default_rng(0))
    assert not emerging[plain.indices].any()
    quota = create_policy("linucb", F, {"alpha": 0.0, "emerging_slots": 2})
    quota.update(np.eye(F), np.arange(F, dtype=float))
    slate = quota.rank(cands, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(slate.indices, [5, 1, 0])  # best overall, then the best emerging, twice
    np.testing.assert_array_equal(slate.propensities, [1.0, 1.0, 1.0])
    share = create_policy("linucb", F, {"alpha": 0.0, "emerging_share": 0.5})  # ceil(0.5 * 3) = 2 slots
    share.update(np.eye(F), np.arange(F, dtype=float))
    np.testing.assert_array_equal(share.rank(cands, 3, np.random.default_rng(0)).indices, [5, 1, 0])
    none_eligible = Candidates(np.eye(F), np.zeros(F, bool))
    np.testing.assert_array_equal(quota.rank(none_eligible, 3, np.random.default_rng(0)).indices, [5, 4, 3])


def test_emerging_weight_trades_relevance_for_exposure() -> None:
    emerging = np.array([False, True, False, False, False, True])
    cands = Candidates(np.eye(F), emerging)
    # With l2 = 1 the ridge on the identity halves the targets: scores are [0, 3.2, 0, 0, 4.0, 3.0].
    for weight, top3 in ((0.0, [4, 1, 5]), (0.5, [4, 1, 5]), (0.9, [1, 4, 5]), (1.5, [1, 5, 4])):
        policy = create_policy("epsilon_greedy", F, {"epsilon": 0.0, "emerging_weight": weight})
        policy.update(np.eye(F), np.array([0, 3.2, 0, 0, 4.0, 3.0]) * 2)
        assert list(policy.rank(cands, 3, np.random.default_rng(0)).indices) == top3, weight


def test_optimism_favours_items_and_creators_with_little_data() -> None:
    policy = create_policy("epsilon_greedy", F, {"epsilon": 0.0, "arm_buckets": 128, "optimism": 0.3})
    x = np.zeros((1, F))
    seen = np.array(["old"], dtype=object)
    for _ in range(50):
        policy.learn(x, np.zeros(1), np.zeros(1, np.int64), seen, seen)
    cands = Candidates(
        np.zeros((2, F)), np.zeros(2, bool), np.array(["old", "new"], object), np.array(["old", "n"], object)
    )
    table = policy.table(cands)
    assert table[1] > table[0]
    assert policy.rank(cands, 1, np.random.default_rng(0)).indices[0] == 1


def test_item_and_creator_terms_learn_what_features_cannot() -> None:
    rng = np.random.default_rng(3)
    policy = create_policy("epsilon_greedy", F, {"epsilon": 0.0, "arm_buckets": 1024, "position_model": "none"})
    creators = np.array([f"creator-{i}" for i in range(10)], dtype=object)
    quality = np.linspace(-0.3, 0.3, 10)
    for _ in range(200):
        c = rng.integers(10, size=20)
        policy.learn(np.zeros((20, F)), 0.5 + quality[c] + 0.1 * rng.normal(size=20), None, creators[c], creators[c])
    cands = Candidates(np.zeros((10, F)), np.zeros(10, bool), creators, creators)
    assert np.corrcoef(policy.table(cands), quality)[0, 1] > 0.95


def test_position_model_recovers_relevance_from_position_biased_clicks() -> None:
    rng = np.random.default_rng(4)
    policy = create_policy("epsilon_greedy", 1, {"epsilon": 0.0, "l2": 1e-3})
    naive = create_policy("epsilon_greedy", 1, {"epsilon": 0.0, "l2": 1e-3, "position_model": "none"})
    slots = rng.integers(5, size=20000)
    clicks = (rng.random(20000) < 0.5 / np.log2(slots + 2)).astype(float)
    for p in (policy, naive):
        p.learn(np.ones((20000, 1)), clicks, slots)
    assert policy.scores(np.ones((1, 1)))[0] == pytest.approx(0.5, abs=0.02)
    assert naive.scores(np.ones((1, 1)))[0] < 0.4


def test_batch_update_equals_one_row_at_a_time() -> None:
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(200, F)), rng.normal(size=200)
    a, b = LinUCB(F), LinUCB(F)
    a.update(X, y)  # one solve
    for i in range(200):
        b.update(X[i : i + 1], y[i : i + 1])  # Sherman-Morrison
    np.testing.assert_allclose(a.model.A_inv, b.model.A_inv, atol=1e-10)
    np.testing.assert_allclose(a.model.theta, b.model.theta, atol=1e-10)


def test_corrupt_or_foreign_snapshots_are_rejected() -> None:
    with pytest.raises(PolicyStateError, match="not a Scout policy snapshot"):
        load_policy(b"garbage")
    with pytest.raises(PolicyStateError, match="expected 'linucb'"):
        LinUCB.from_bytes(trained("epsilon_greedy").to_bytes())
    bigger = create_policy("linucb", F + 1, {})
    with pytest.raises(PolicyStateError, match="expected dimension"):
        bigger._load_state(trained("linucb")._state())
    with pytest.raises(PolicyStateError, match="vw model does not load"):
        create_policy("vw", F, {})._load_state({"vw_model": np.frombuffer(b"not a model", dtype=np.uint8)})


def test_vw_rejects_settings_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="exploration"):
        create_policy("vw", F, {"exploration": "ucb"})
    with pytest.raises(ValueError, match="emerging_weight"):
        create_policy("vw", F, {"emerging_weight": 0.1})


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
    with pytest.raises(ValueError, match="floor"):
        create_policy("linucb", F, {"floor": 1.0})
    with pytest.raises(ValueError, match="emerging_share"):
        create_policy("softmax", F, {"emerging_share": 2})
    with pytest.raises(ValueError, match="optimism needs"):
        create_policy("linucb", F, {"optimism": 1.0})
    with pytest.raises(ValueError, match="position_model"):
        create_policy("linucb", F, {"position_model": "cascade"})
    with pytest.raises(ValueError, match="temperature"):
        create_policy("softmax", F, {"temperature": 0})
    with pytest.raises(ValueError, match="emerging"):
        Candidates(np.zeros((3, F)), np.zeros(2, bool))
    with pytest.raises(ValueError, match="valid"):
        CandidateBatch(np.zeros((2, 3, F)), np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="feature columns"):
        LinUCB(F).rank(Candidates(np.zeros((3, F + 1)), np.zeros(3, bool)), 1, np.random.default_rng(0))


def test_thompson_mixture_matches_the_closed_form_for_two_candidates_within_its_stated_error() -> None:
    draws = 4000
    policy = create_policy("thompson", F, {"scale": 0.7, "draws": draws})
    rng = np.random.default_rng(8)
    X = rng.normal(size=(30, F))
    policy.update(X, X @ rng.normal(size=F) + rng.normal(size=30))
    pair = rng.normal(size=(2, F))
    diff = pair[0] - pair[1]
    mean = diff @ policy.model.theta
    sd = 0.7 * np.sqrt(diff @ policy.model.A_inv @ diff)
    exact = 0.5 * (1 + math.erf(mean / (sd * math.sqrt(2))))  # P(draw prefers candidate 0)
    p = policy.slot_distributions(Candidates(pair, np.zeros(2, bool)), np.array([0]))[0, 0]
    assert abs(p - exact) <= 4 * 0.5 / math.sqrt(draws)


def test_update_batch_learns_served_rows_with_their_slots_and_ids() -> None:
    rng = np.random.default_rng(9)
    n, k, s = 20, 5, 3
    batch = CandidateBatch(
        rng.normal(size=(n, k, F)), np.ones((n, k), bool), np.zeros((n, k), bool), ids(n, k), ids(n, k, "c")
    )
    served = np.stack([rng.permutation(k)[:s] for _ in range(n)])
    served[3, 2] = -1
    rewards = rng.random((n, s))
    a = create_policy("linucb", F, {"arm_buckets": 64})
    b = create_policy("linucb", F, {"arm_buckets": 64})
    a.update_batch(batch, served, rewards)
    rows, slots = np.nonzero(served >= 0)
    cols = served[rows, slots]
    b.learn(
        batch.features[rows, cols],
        rewards[rows, slots],
        slots,
        batch.item_ids[rows, cols],
        batch.creator_ids[rows, cols],
    )
    np.testing.assert_allclose(a.model.theta, b.model.theta)
    np.testing.assert_allclose(a.arms.b, b.arms.b)
    assert a.model.A[0, 0] < 1 + (batch.features[rows, cols, 0] ** 2).sum()  # slots below the top are down-weighted
