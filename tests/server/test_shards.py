"""Decisions spread over shards on one real redis-server: joined once by racing joiners, learned from every shard
with one position per shard, and a learner position of another shard count refused with a clear error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from conftest import make_settings
from test_runtime import _decisions

from embeddings.index import IndexArtifact
from server.learner import Learner
from server.recommender import PolicyBook
from server.store import Store, parse_positions

pytestmark = pytest.mark.redis


def test_sharded_decisions_are_joined_once_and_learned_across_shards(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs")
    records = _decisions(settings, index, 60)

    async def scenario() -> tuple[list[int], int, list[int], Learner, list[str]]:
        store = Store(aioredis.Redis.from_url(clean_redis), shards=4)
        base = int(time.time() * 1000)
        for k, record in enumerate(records):
            await store.record_decision(record, base + k, 0)
        per_shard = [int(await store.client.zcard(key)) for key in store.due_keys]
        before = await store.lags()
        later = int(time.time() * 1000) + 10_000
        # Two joiners race over the same shards, in small batches: each decision is joined exactly once.
        await asyncio.gather(*(store.join_due(later, 7, 60) for _ in range(2)))
        while await store.pending_count():
            await asyncio.gather(*(store.join_due(later, 7, 60) for _ in range(2)))
        joined = [int(await store.client.xlen(key)) for key in store.joined_keys]
        learner = Learner(
            store, lambda: PolicyBook(settings, index.dim), index, settings.learner, "l0", settings.limits
        )
        learner.settings = settings.learner.__class__(batch=25, poll_interval_s=0.01, lease_ttl_s=5.0)
        while learner.applied + learner.skipped < len(records):
            await learner.step()
        text, positions = await store.positions()
        after = await store.lags()
        assert before[0] == 60 and after == (0, 0.0, 0.0), (before, after)  # pending over all shards; caught up
        assert await store.learner_caught_up()
        learner.close()
        await store.client.aclose()
        return per_shard, sum(joined), joined, learner, [text, *positions]

    per_shard, total, joined, learner, position = asyncio.run(scenario())
    assert sum(per_shard) == 60 and all(per_shard), per_shard  # every shard got some, none lost
    assert total == 60 and joined == per_shard  # joined once each, in the decision's own shard
    assert learner.applied == 60 and learner.skipped == 0
    text, *positions = position
    assert text == ",".join(positions) and len(positions) == 4 and "0-0" not in positions


def test_a_position_of_another_shard_count_is_refused_naming_the_setting() -> None:
    assert parse_positions("0-0", 3) == ["0-0"] * 3
    assert parse_positions("1-0,2-0", 2) == ["1-0", "2-0"]
    with pytest.raises(ValueError, match=r"names 2 shard.*redis_shards is 3"):
        parse_positions("1-0,2-0", 3)
