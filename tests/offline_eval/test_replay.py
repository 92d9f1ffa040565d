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
from offline_eval.logs import LogError, records_to_table
from offline_eval.replay import decisions, replay
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
