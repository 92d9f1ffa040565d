"""Group commit of decisions on a real redis-server: concurrent decisions share Redis calls and are each stored
once; a caller cancelled while waiting has its decision withdrawn; a failing Redis fails every waiter, none hangs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from conftest import make_settings
from test_runtime import _decisions

from embeddings.index import IndexArtifact
from server.store import Store
from server.writer import DecisionWriter

pytestmark = pytest.mark.redis


def test_concurrent_decisions_share_calls_and_are_each_stored_once(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 40)

    async def scenario() -> tuple[DecisionWriter, list[int], list[bytes | None]]:
        store = Store(aioredis.Redis.from_url(clean_redis), shards=4)
        writer = DecisionWriter(store, stream_maxlen=1000, ttl_s=600, max_batch=16)
        due = int(time.time() * 1000) + 60_000
        await asyncio.gather(*(writer.write(record, due + k) for k, record in enumerate(records)))
        per_shard = [int(await store.client.zcard(key)) for key in store.due_keys]
        stored = [await store.client.hget(store.pending_key(r["event_id"]), "decision") for r in records]
        streamed = sum([int(await store.client.xlen(key)) for key in store.decision_keys])
        assert streamed == 40
        assert writer._task is None  # drained: the next write starts a new batch
        await store.client.aclose()
        return writer, per_shard, stored

    writer, per_shard, stored = asyncio.run(scenario())
    assert sum(per_shard) == 40 and all(per_shard), per_shard
    assert [orjson.loads(s) if s else None for s in stored] == records  # each decision stored whole, in its shard
    assert writer.decisions == 40
    # All 40 were waiting before the first call: 16 + 16 + 8 (one call per decision before group commit).
    assert writer.calls == 3, writer.calls


def test_a_caller_cancelled_while_waiting_has_its_decision_withdrawn(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 3)

    async def scenario() -> tuple[list[bool], int, bool]:
        store = Store(aioredis.Redis.from_url(clean_redis))
        writer = DecisionWriter(store, stream_maxlen=0, ttl_s=600)
        due = int(time.time() * 1000) + 60_000
        tasks = [asyncio.create_task(writer.write(record, due)) for record in records]
        await asyncio.sleep(0)  # all three are waiting on the first batch's call
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] is None and results[2] is None and isinstance(results[1], asyncio.CancelledError)
        while writer._task is not None:  # the withdrawal happens after the batch lands
            await asyncio.sleep(0.01)
        exists = [bool(await store.client.exists(store.pending_key(r["event_id"]))) for r in records]
        due_count = int(await store.client.zcard(store.due_keys[0]))
        cancelled_due = await store.client.zscore(store.due_keys[0], records[1]["event_id"]) is not None
        await store.client.aclose()
        return exists, due_count, cancelled_due

    exists, due_count, cancelled_due = asyncio.run(scenario())
    assert exists == [True, False, True]
    assert due_count == 2 and not cancelled_due


def test_an_unreachable_redis_fails_every_waiter_and_the_writer_recovers(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 5)

    async def scenario() -> tuple[list[BaseException | None], list[BaseException | None]]:
        dead = Store(aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5))
        writer = DecisionWriter(dead, stream_maxlen=0, ttl_s=600)
        due = int(time.time() * 1000) + 60_000
        first = await asyncio.wait_for(
            asyncio.gather(*(writer.write(r, due) for r in records), return_exceptions=True), timeout=10
        )
        writer.store = Store(aioredis.Redis.from_url(clean_redis))  # Redis is back
        second = await asyncio.gather(*(writer.write(r, due) for r in records), return_exceptions=True)
        assert int(await writer.store.client.zcard(writer.store.due_keys[0])) == 5
        await dead.client.aclose()
        await writer.store.client.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(outcome, redis.ConnectionError) for outcome in first), first
    assert second == [None] * 5
