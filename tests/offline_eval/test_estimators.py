"""Estimators against the synthetic world's ground truth, on logs made by the server's own decision code."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bandits.base import Policy
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.features import feature_dim
from embeddings.index import IndexArtifact
from offline_eval.evaluation import evaluate
from offline_eval.logs import READABLE, DecisionLog, LogError, read_logs, records_to_table
from offline_eval.replay import decisions
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld, item_index, user_index
from server.recommender import PolicyBook, Recommender, RecommendInput
from server.settings import Variant, load_settings


def simulate(
    world: SyntheticWorld, index: IndexArtifact, policy: Policy, n: int, seed: int, num_items: tuple[int, int] = (3, 3)
) -> list[dict]:
    settings = load_settings(environ={})
    only = Variant("control", 1.0, policy.name, ())
    experiment = replace(settings.experiments[0], variants=(only,), candidates=10)
    settings = replace(settings, experiments=(experiment,))
    book = PolicyBook(settings, index.dim)
    for (experiment, variant), _ in book.items():
        book.swap(experiment, variant, policy)
    recommender = Recommender(settings, index, book, seed=seed)
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        request = world.sample_request(rng)
        decision = recommender.decide(
            RecommendInput(
                request.unit_id,
                "home",
                num_items[0] if num_items[0] == num_items[1] else int(rng.integers(num_items[0], num_items[1] + 1)),
                request.context,
                request.seed_item_ids,
            )
        )
        record = decision.record
        context = np.array([request.context[k] for k in CONTEXT_KEYS])
        clicks = world.sample_clicks(rng, request.user, item_index(record["item_ids"]), context)
        records.append(
            record
            | {"rewards": clicks.tolist(), "reward_observed": [True] * len(clicks), "joined_at": record["decided_at"]}
        )
    return records


def as_log(records: list[dict]) -> DecisionLog:
    table = records_to_table(records)
    return DecisionLog({name: table.column(name).to_pylist() for name in table.column_names})


def fitted(world: SyntheticWorld, index: IndexArtifact, epsilon: float, n: int, seed: int) -> EpsilonGreedy:
    policy = EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS)), epsilon=epsilon)
    log = as_log(simulate(world, index, EpsilonGreedy(policy.feature_dim, epsilon=1.0), n, seed))
    for d in decisions(log, index):
        policy.update(d.candidates.features[d.served], d.rewards)
    return policy


def truth(world: SyntheticWorld, log: DecisionLog, index: IndexArtifact, policy: Policy) -> float:
    rng = np.random.default_rng(0)
    values = [
        world.expected_slate_reward(
            policy,
            d.candidates,
            user_index(d.unit_id),
            item_index(index.item_ids[d.candidate_positions].tolist()),
            d.context,
            3,
            rng,
            8,
        )
        for d in decisions(log, index)
    ]
    return float(np.mean(values))


@pytest.mark.slow
def test_intervals_of_ips_snips_dr_contain_the_true_value_of_a_different_policy(
    world: SyntheticWorld, index: IndexArtifact
) -> None:
    # A different policy that the logs support: the same learned model exploring far less (epsilon 0.6 -> 0.1).
    logging_policy = fitted(world, index, epsilon=0.6, n=1500, seed=11)
    target = EpsilonGreedy.from_bytes(logging_policy.to_bytes(), {"epsilon": 0.1})
    log = as_log(simulate(world, index, logging_policy, 3000, seed=13))
    true_value = truth(world, log, index, target)
    logged_value = float(np.mean([sum(r) for r in log["rewards"]]))
    assert abs(true_value - logged_value) > 0.01, "the target must differ from the logging policy"
    result = evaluate(log, index, target, bootstrap=500, seed=0)
    for estimate in result.estimates:
        assert estimate.lower <= true_value <= estimate.upper, (estimate, true_value)
        assert estimate.upper - estimate.lower < 0.5 * true_value, estimate


def test_target_equal_to_logging_policy_reproduces_the_logged_mean(world: SyntheticWorld, index: IndexArtifact) -> None:
    policy = fitted(world, index, epsilon=0.5, n=200, seed=21)
    log = as_log(simulate(world, index, policy, 300, seed=22))
    result = evaluate(log, index, policy, bootstrap=200)
    logged_mean = np.mean([sum(r) for r in log["rewards"]])
    for estimate in result.estimates[:2]:
        assert estimate.value == pytest.approx(logged_mean)
    assert result.diagnostics.effective_sample_size == pytest.approx(300)
    assert result.diagnostics.warnings == ()


def test_deterministic_logs_are_flagged(world: SyntheticWorld, index: IndexArtifact) -> None:
    greedy = fitted(world, index, epsilon=0.0, n=200, seed=31)
    log = as_log(simulate(world, index, greedy, 100, seed=32))
    other = fitted(world, index, epsilon=0.2, n=200, seed=33)
    result = evaluate(log, index, other, bootstrap=50)
    assert result.diagnostics.deterministic_share > 0.9
    assert any("deterministic" in w for w in result.diagnostics.warnings)


def test_malformed_logs_name_the_column_and_row(world: SyntheticWorld, index: IndexArtifact, tmp_path: Path) -> None:
    records = simulate(world, index, EpsilonGreedy(feature_dim(index.dim, 2), epsilon=1.0), 5, seed=41)
    records[3]["propensities"] = [0.0, *records[3]["propensities"][1:]]
    pq.write_table(records_to_table(records), tmp_path / "bad.parquet")
    with pytest.raises(LogError, match=r"bad\.parquet: column propensities: row 3"):
        read_logs(tmp_path / "bad.parquet")
    pq.write_table(records_to_table(records[:2]).drop(["rewards"]), tmp_path / "cols.parquet")
    with pytest.raises(LogError, match=r"cols\.parquet: missing column\(s\) rewards"):
        read_logs(tmp_path / "cols.parquet")
    records[3]["propensities"][0] = 0.5
    records[1]["rewards"] = [float("nan"), 0.0, 0.0]
    pq.write_table(records_to_table(records), tmp_path / "nan.parquet")
    with pytest.raises(LogError, match=r"column rewards: row 1"):
        read_logs(tmp_path / "nan.parquet")
    newer = records_to_table(records[:2])
    pq.write_table(newer.replace_schema_metadata({b"scout.schema_version": b"99"}), tmp_path / "v2.parquet")
    with pytest.raises(LogError, match=r"v2\.parquet: log schema version 99; this reader knows versions 1, 2"):
        read_logs(tmp_path / "v2.parquet")
    older = records_to_table(records[:1]).drop_columns(list(READABLE["1"]))  # as version 1
    pq.write_table(older.replace_schema_metadata({b"scout.schema_version": b"1"}), tmp_path / "v1.parquet")
    assert read_logs(tmp_path / "v1.parquet")["config_version"] == [""]
    assert read_logs(tmp_path / "v1.parquet")["assignment"] == ["variant"]
    with pytest.raises(LogError, match="no such file"):
        read_logs(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogError, match=r"empty: no \.parquet files"):
        read_logs(tmp_path / "empty")
