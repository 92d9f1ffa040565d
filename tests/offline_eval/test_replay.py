"""The vectorized replay equals the per-decision path, on logs made by the server's own decision code."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_estimators import as_log, fitted, simulate

from bandits.base import Policy
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.features import feature_dim
from bandits.linear import LinearPolicy
from bandits.registry import create_policy
from embeddings.index import IndexArtifact
from offline_eval.base import SlateData
from offline_eval.estimators import create_estimators
from offline_eval.evaluation import evaluate_data
from offline_eval.logs import LogError, records_to_table
from offline_eval.replay import decisions, queries, replay
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld


def reference(log, index: IndexArtifact, target: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-decision target propensities, expected features and logged features, the slow way."""
    n, s = len(log), max(len(i) for i in log["item_ids"])
    target_p, target_x = np.zeros((n, s)), np.zeros((n, s, target.feature_dim))
    logged_x = np.zeros((n, s, target.feature_dim))
    for d in decisions(log, index):
        dists = target.slot_distributions(d.candidates, d.served)
        target_p[d.row, : len(d.served)] = dists[np.arange(len(d.served)), d.served]
        target_x[d.row, : len(d.served)] = dists @ d.candidates.features
        logged_x[d.row, : len(d.served)] = d.candidates.features[d.served]
    return target_p, target_x, logged_x


@pytest.mark.parametrize(
    ("kind", "threads"), [("epsilon_greedy", 1), ("linucb", 1), ("linucb", 2), ("linucb+arms", 2), ("thompson", 2)]
)
def test_vectorized_replay_matches_the_per_decision_path(
    world: SyntheticWorld, index: IndexArtifact, kind: str, threads: int
) -> None:
    """The batched replay (LinUCB from the feature parts, several batches at once) equals one decision at a time."""
    logging_policy = fitted(world, index, epsilon=0.5, n=150, seed=51)
    records = simulate(world, index, logging_policy, 120, seed=52, num_items=(1, 4))
    log = as_log(records)
    assert len({len(i) for i in log["item_ids"]}) > 1
    if kind == "epsilon_greedy":
        target: Policy = EpsilonGreedy.from_bytes(logging_policy.to_bytes(), {"epsilon": 0.2})
    else:
        dim = logging_policy.feature_dim
        name, params = {
            "linucb": ("linucb", {"alpha": 0.5}),
            "linucb+arms": ("linucb", {"alpha": 0.5, "arm_buckets": 64, "floor": 0.1}),
            "thompson": ("thompson", {"scale": 0.2, "draws": 20, "floor": 0.1}),
        }[kind]
        target = create_policy(name, dim, params)
        for d in list(decisions(log, index))[:40]:
            assert isinstance(target, LinearPolicy)
            target.learn(d.candidates.features[d.served], d.rewards, np.arange(len(d.served)))
    data = replay(log, index, target, chunk=50, threads=threads)
    target_p, target_x, logged_x = reference(log, index, target)
    np.testing.assert_allclose(data.target_propensity, target_p, atol=1e-9)
    np.testing.assert_allclose(data.target_features, target_x, atol=1e-6)
    np.testing.assert_allclose(data.logged_features, logged_x, atol=1e-6)
    lengths = np.array([len(i) for i in log["item_ids"]])
    np.testing.assert_array_equal(data.lengths(), lengths)


def test_replay_names_the_row_of_an_unknown_item(world: SyntheticWorld, index: IndexArtifact, tmp_path: Path) -> None:
    records = simulate(world, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS)), epsilon=1.0), 5, 61)
    records[2]["candidate_ids"] = [*records[2]["candidate_ids"][:-1], "no-such-item"]
    pq.write_table(records_to_table(records), tmp_path / "x.parquet")
    log = as_log(records)
    with pytest.raises(LogError, match=r"column candidate_ids: row 2: 'no-such-item' is not in index"):
        replay(log, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS))))


def test_replayed_slates_carry_factored_features_that_build_to_the_same_estimates(
    world: SyntheticWorld, index: IndexArtifact
) -> None:
    """Replay keeps the reward model's inputs factored: estimators without a model never build the features, and
    the cross-fitted model (a chunk at a time) gives what it gives on the built arrays."""
    logging_policy = fitted(world, index, epsilon=0.5, n=150, seed=81)
    log = as_log(simulate(world, index, logging_policy, 200, seed=82, num_items=(1, 4)))
    target = EpsilonGreedy.from_bytes(logging_policy.to_bytes(), {"epsilon": 0.2})
    lazy = replay(log, index, target, chunk=64)
    assert lazy.parts is not None and not lazy.features_built
    plain = evaluate_data(lazy, create_estimators(["ips", "snips"]))
    assert not lazy.features_built  # no reward model: nothing read the n-by-S-by-F arrays
    eager = SlateData(
        lazy.logged_propensity,
        lazy.target_propensity,
        lazy.reward,
        lazy.mask,
        lazy.logged_features,
        lazy.target_features,
    )
    assert eager.parts is None
    fresh = replay(log, index, target, chunk=64)
    for names in (["ips", "snips"], ["dm", "dr", "sndr"]):
        a = evaluate_data(fresh, create_estimators(names), seed=3)
        b = evaluate_data(eager, create_estimators(names), seed=3)
        for x, y in zip(a.estimates, b.estimates, strict=True):
            assert x.value == pytest.approx(y.value, rel=1e-12, abs=1e-12), x
            assert x.std_error == pytest.approx(y.std_error, rel=1e-9), x
    assert [e.value for e in plain.estimates] == [
        e.value for e in evaluate_data(eager, create_estimators(["ips", "snips"])).estimates
    ]


def test_replay_refuses_a_thread_count_below_one(world: SyntheticWorld, index: IndexArtifact) -> None:
    log = as_log(simulate(world, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS)), epsilon=1.0), 3, 91))
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        replay(log, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS))), threads=0)


@pytest.mark.parametrize("lengths", [[3, 3, 3, 3], [2, 0, 5, 1]])
def test_batched_queries_are_the_index_queries_bit_for_bit(index: IndexArtifact, lengths: list[int]) -> None:
    """Replay's n queries at once equal ``index.query`` row for row, with equal and with varying seed counts."""
    rng = np.random.default_rng(3)
    seeds = [rng.choice(len(index), size=m, replace=False) for m in lengths]
    flat = np.concatenate(seeds).astype(np.int64)
    batched = queries(index, flat, np.array(lengths, dtype=np.int64))
    np.testing.assert_array_equal(batched, np.stack([index.query(s) for s in seeds]))


def test_threaded_replay_cuts_batches_into_pieces_in_order(
    world: SyntheticWorld, index: IndexArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches cut into pieces for the threads give what one thread gives, and errors still name the log row."""
    from offline_eval import replay as replay_module

    monkeypatch.setattr(replay_module, "THREAD_PIECE", 7)
    records = simulate(world, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS)), epsilon=1.0), 60, 93)
    target = create_policy("linucb", feature_dim(index.dim, len(CONTEXT_KEYS)), {"alpha": 0.5})
    assert target.batched
    one, two = (replay(as_log(records), index, target, chunk=20, threads=t) for t in (1, 2))
    for name in ("logged_propensity", "target_propensity", "reward", "mask"):
        np.testing.assert_array_equal(getattr(two, name), getattr(one, name))
    np.testing.assert_array_equal(two.target_features, one.target_features)
    records[33]["candidate_ids"] = [*records[33]["candidate_ids"][:-1], "no-such-item"]
    with pytest.raises(LogError, match=r"row 33: 'no-such-item' is not in index"):
        replay(as_log(records), index, target, chunk=20, threads=2)


def test_padding_ids_are_none_whatever_the_id_dtype() -> None:
    from offline_eval.replay import _ids

    out = _ids(np.array(["a", "b", "c"]), np.array([[0, 1], [2, 0]]), np.array([[True, True], [True, False]]))
    assert out.dtype == object and out.tolist() == [["a", "b"], ["c", None]]
