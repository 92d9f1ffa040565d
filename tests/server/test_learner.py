"""The learner's batch path: served items rebuilt with array operations equal the per-decision replay, the policy
state equals learning decision by decision, and decisions of several index versions are each rebuilt against
their own version (real Redis, real FAISS)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import redis.asyncio as aioredis
from conftest import make_settings

from bandits.registry import create_policy
from embeddings.builder import build_artifact
from embeddings.encoder import EncoderConfig
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, DecisionLog
from offline_eval.replay import decisions
from offline_eval.served import served_batch
from offline_eval.world import SyntheticWorld
from server.indexes import IndexVersions
from server.learner import Learner, _table
from server.recommender import PolicyBook, Recommender, RecommendInput
from server.settings import Settings
from server.store import Store


def _records(settings: Settings, index: IndexArtifact, n: int, seed: int = 3) -> list[dict]:
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        seeds = () if k % 7 == 0 else tuple(f"item-{int(i):07d}" for i in rng.integers(1, 3000, size=1 + k % 3))
        record = recommender.decide(
            RecommendInput(
                unit_id=f"u{k}",
                surface="home",
                num_items=1 + k % 4,
                context={"mobile": float(k % 2)},
                seed_item_ids=seeds,
            )
        ).record
        record["rewards"] = rng.random(len(record["item_ids"])).round(2).tolist()
        out.append(record)
    return out


def _per_decision(records: list[dict], index: IndexArtifact) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, rewards, slots) of each decision's served items, from the per-decision replay."""
    columns = {name: [r.get(name) for r in records] for name in SCHEMA.names}
    columns["reward_observed"] = [[True] * len(r["item_ids"]) for r in records]
    columns["joined_at"] = [r["decided_at"] for r in records]
    return [
        (d.candidates.features[d.served], np.asarray(d.rewards), np.arange(len(d.served)))
        for d in decisions(DecisionLog(columns), index)
    ]


def test_served_batch_matches_the_per_decision_replay_and_learning_row_by_row(
    index_dir: Path, index: IndexArtifact, tmp_path: Path
) -> None:
    settings = make_settings(index_dir, "redis://unused", tmp_path / "logs")
    records = [r for r in _records(settings, index, 40) if r["experiment"] == "home-ranking"]
    batch = served_batch(_table(records), index)
    rows = _per_decision(records, index)
    for i, (features, rewards, slots) in enumerate(rows):
        s = len(slots)
        np.testing.assert_allclose(batch.candidates.features[i, :s], features, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(batch.served[i, :s], slots)
        assert (batch.served[i, s:] == -1).all()
        np.testing.assert_array_equal(batch.rewards[i, :s], rewards)
        assert batch.candidates.item_ids is not None
        assert batch.candidates.item_ids[i, :s].tolist() == records[i]["item_ids"]
    dim = batch.candidates.features.shape[2]
    # Without item/creator terms learning is order-free: the batch equals learning decision by decision.
    fast, slow = create_policy("linucb", dim, {"alpha": 0.5}), create_policy("linucb", dim, {"alpha": 0.5})
    fast.update_batch(batch.candidates, batch.served, batch.rewards, batch.propensities)
    for features, rewards, slots in rows:
        slow.learn(features, rewards, slots)  # type: ignore[attr-defined]
    for name, value in slow._state().items():
        np.testing.assert_allclose(fast._state()[name], value, rtol=1e-7, atol=1e-9, err_msg=name)
    # With item/creator terms: the batch equals one learn call on the per-decision rows with their ids.
    params = {"alpha": 0.5, "arm_buckets": 64}
    fast, slow = create_policy("linucb", dim, params), create_policy("linucb", dim, params)
    fast.update_batch(batch.candidates, batch.served, batch.rewards, batch.propensities)
    slow.learn(  # type: ignore[attr-defined]
        np.vstack([f for f, _, _ in rows]),
        np.concatenate([r for _, r, _ in rows]),
        np.concatenate([s for _, _, s in rows]),
        np.array([i for r in records for i in r["item_ids"]], dtype=object),
        np.array([index.creator_ids[index.positions([i])[0]] for r in records for i in r["item_ids"]], dtype=object),
    )
    for name, value in slow._state().items():
        np.testing.assert_allclose(fast._state()[name], value, rtol=1e-7, atol=1e-9, err_msg=name)


def test_served_batch_names_the_row_of_an_unknown_item(index_dir: Path, index: IndexArtifact, tmp_path: Path) -> None:
    settings = make_settings(index_dir, "redis://unused", tmp_path / "logs")
    records = _records(settings, index, 3)
    records[2]["item_ids"] = ["no-such-item"]
    with pytest.raises(ValueError, match="column item_ids: row 2: 'no-such-item'"):
        served_batch(_table(records), index)
    assert isinstance(_table(records), pa.Table)


@pytest.mark.redis
@pytest.mark.slow
def test_learner_applies_decisions_of_each_index_version_with_that_version(
    world: SyntheticWorld, index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    root = tmp_path / "versions"
    root.mkdir()
    other = build_artifact(world.catalog, EncoderConfig(dim=16, seed=2))  # same items, other vectors
    assert other.version != index.version
    index.publish(root)
    other.publish(root)
    settings = make_settings(root, clean_redis, tmp_path / "logs")
    old, new = _records(settings, index, 12, seed=4), _records(settings, other, 12, seed=5)
    stray = dict(old[0], event_id="stray", index_version="no-such-version")
    records = old[:6] + new[:6] + [stray] + old[6:] + new[6:]

    async def scenario() -> Learner:
        store = Store(aioredis.Redis.from_url(clean_redis))
        base = int(time.time() * 1000)
        for k, record in enumerate(records):
            await store.record_decision(record, base + k, 0)
            for item, value in zip(record["item_ids"], record["rewards"], strict=True):
                await store.record_reward(record["event_id"], item, value)
        await store.join_due(base + 10_000, 10_000, 60)
        versions = IndexVersions(IndexArtifact.load_version(root), root)
        learner = Learner(
            store, lambda: PolicyBook(settings, index.dim), versions, settings.learner, "l", settings.limits
        )
        await learner.step()
        await store.client.aclose()
        learner.close()
        return learner

    learner = asyncio.run(scenario())
    assert (learner.applied, learner.skipped) == (24, 1)
    assert any(r for record in records for r in record["rewards"])
    # The same policies learned from each version's decisions rebuilt against that version, in stream order.
    expected = PolicyBook(settings, index.dim)
    for run, artifact in ((old[:6], index), (new[:6], other), (old[6:], index), (new[6:], other)):
        for key, policy in expected.items():
            mine = [r for r in run if (r["experiment"], r["variant"]) == key]
            if mine:
                b = served_batch(_table(mine), artifact)
                policy.update_batch(b.candidates, b.served, b.rewards, b.propensities)
    for key, policy in expected.items():
        got = learner.policies.get(*key)
        for name, value in policy._state().items():
            np.testing.assert_allclose(got._state()[name], value, rtol=1e-9, err_msg=f"{key} {name}")
