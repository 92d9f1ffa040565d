"""Group commit of decisions on a real redis-server: concurrent decisions share Redis calls and are each stored
once; a caller cancelled while waiting has its decision withdrawn; a failing Redis fails every waiter, none hangs,
and a decision Redis stored after its call timed out is withdrawn."""

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
from server.store import DecisionsStale, Store
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
        assert writer._task is not None and writer._task.done()  # drained: the next write starts a new batch
        await store.client.aclose()
        return writer, per_shard, stored

    writer, per_shard, stored = asyncio.run(scenario())
    assert sum(per_shard) == 40 and all(per_shard), per_shard
    assert [orjson.loads(s) if s else None for s in stored] == records  # each decision stored whole, in its shard
    assert writer.decisions == 40
    # All 40 were waiting before the first batch: 16 + 16 + 8 (one call per decision before group commit).
    assert writer.batches == 3, writer.batches


_SPIN = """
local start = redis.call('TIME')
local function ms() local t = redis.call('TIME') return (t[1] - start[1]) * 1000 + (t[2] - start[2]) / 1000 end
while ms() < tonumber(ARGV[1]) do end
return 1
"""


def test_cancelled_callers_lose_their_decisions_whether_queued_or_in_flight(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 3)

    async def scenario() -> tuple[list[bool], list[BaseException | None], DecisionWriter]:
        store = Store(aioredis.Redis.from_url(clean_redis))
        other = aioredis.Redis.from_url(clean_redis)
        writer = DecisionWriter(store, stream_maxlen=0, ttl_s=600)
        due = int(time.time() * 1000) + 60_000
        spin = asyncio.create_task(other.eval(_SPIN, 0, 400))  # Redis is busy for 0.4 s
        await asyncio.sleep(0.05)
        in_flight = asyncio.create_task(writer.write(records[0], due))
        await asyncio.sleep(0.05)  # its batch is sent, and waits on Redis
        kept, queued = (asyncio.create_task(writer.write(r, due)) for r in records[1:])
        await asyncio.sleep(0.01)  # both wait behind the batch in flight
        in_flight.cancel()
        queued.cancel()
        outcomes = await asyncio.gather(in_flight, kept, queued, return_exceptions=True)
        await spin
        await writer.close()  # the in-flight decision is withdrawn after its batch lands
        exists = [bool(await store.client.exists(store.pending_key(r["event_id"]))) for r in records]
        assert int(await store.client.zcard(store.due_keys[0])) == 1
        await store.client.aclose()
        await other.aclose()
        return exists, outcomes, writer

    exists, outcomes, writer = asyncio.run(scenario())
    assert isinstance(outcomes[0], asyncio.CancelledError) and isinstance(outcomes[2], asyncio.CancelledError)
    assert outcomes[1] is None
    assert exists == [False, True, False]  # withdrawn, stored, never sent
    assert (writer.batches, writer.decisions) == (2, 2)  # the queued one was dropped before its batch was sent


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
        retried = [dict(r, event_id=r["event_id"][:-4] + "beef") for r in records]  # the clients' new decisions
        second = await asyncio.gather(*(writer.write(r, due) for r in retried), return_exceptions=True)
        await writer.close()  # the failed calls' decisions are withdrawn (none was stored); the new ones stay
        assert int(await writer.store.client.zcard(writer.store.due_keys[0])) == 5
        await dead.client.aclose()
        await writer.store.client.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(outcome, redis.ConnectionError) for outcome in first), first
    assert second == [None] * 5


def test_a_stalled_redis_fails_the_waiting_callers_at_once_not_a_timeout_each(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 14)

    async def scenario() -> tuple[list[BaseException | None], DecisionWriter, list[bool], int]:
        store = Store(aioredis.Redis.from_url(clean_redis, socket_timeout=0.3))
        other = aioredis.Redis.from_url(clean_redis)
        writer = DecisionWriter(store, stream_maxlen=0, ttl_s=600, max_batch=4)
        due = int(time.time() * 1000) + 60_000
        await writer.write(records[13], due)  # Redis knows the script: a call it receives, it runs
        spin = asyncio.create_task(other.eval(_SPIN, 0, 1500))  # Redis stalls for 1.5 s
        await asyncio.sleep(0.05)
        first = asyncio.create_task(writer.write(records[0], due))
        await asyncio.sleep(0.05)  # its batch waits on the stalled Redis
        outcomes = await asyncio.gather(first, *(writer.write(r, due) for r in records[1:12]), return_exceptions=True)
        await spin
        await writer.write(records[12], due)  # Redis is back
        await writer.close()
        stored = [bool(await store.client.exists(store.pending_key(r["event_id"]))) for r in (records[0], records[12])]
        due_entries = int(await store.client.zcard(store.due_keys[0]))
        await store.client.aclose()
        await other.aclose()
        return outcomes, writer, stored, due_entries

    outcomes, writer, stored, due_entries = asyncio.run(scenario())
    assert all(isinstance(outcome, redis.TimeoutError) for outcome in outcomes), outcomes
    # One batch timed out; the 11 waiting behind it failed with it instead of waiting out three more timeouts.
    assert (writer.batches, writer.decisions) == (3, 3)
    # Redis ran the timed-out batch once it was free, after its caller had failed: that decision was withdrawn.
    assert stored == [False, True] and due_entries == 2


def test_decisions_that_reach_a_stalled_redis_after_their_deadline_are_not_stored(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    """No withdrawal needed: when Redis wakes it runs its queued calls in no set order, so a withdrawal can come
    after the joiner has already exported the decision (fault injection: 1-2 such rows per 12-20 s stall)."""
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 3)

    async def scenario() -> tuple[list[Exception | None], list[int], int]:
        store = Store(aioredis.Redis.from_url(clean_redis, socket_timeout=0.3), record_within_s=0.3)
        other = aioredis.Redis.from_url(clean_redis)
        due = int(time.time() * 1000) + 60_000
        await store.record_decisions([store.decision_entry(records[0], due)], 0)  # Redis knows the script
        spin = asyncio.create_task(other.eval(_SPIN, 0, 1500))  # Redis stalls for 1.5 s
        await asyncio.sleep(0.05)
        errors = await store.record_decisions([store.decision_entry(r, due) for r in records[1:]], 0)
        await spin  # Redis has now run the stalled call, after its deadline
        stored = [int(await other.exists(store.pending_key(r["event_id"]))) for r in records]
        due_entries = int(await other.zcard(store.due_keys[0]))
        await store.client.aclose()
        await other.aclose()
        return errors, stored, due_entries

    errors, stored, due_entries = asyncio.run(scenario())
    assert all(isinstance(e, redis.TimeoutError) for e in errors), errors
    assert stored == [1, 0, 0] and due_entries == 1  # the old code stored both once Redis woke


def test_a_batch_redis_runs_after_its_deadline_is_refused_by_redis_on_its_own_clock(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    """The deadline is checked by the script (DecisionsStale: Redis answered, nothing to withdraw), before the
    client's own timeout; and it is set on Redis's clock, so a host whose clock is off does not move it."""
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 3)

    async def scenario() -> tuple[list[Exception | None], list[Exception | None], int, int]:
        store = Store(aioredis.Redis.from_url(clean_redis, socket_timeout=5.0), record_within_s=0.3)
        other = aioredis.Redis.from_url(clean_redis)
        due = int(time.time() * 1000) + 60_000
        await store.probe()  # measures the offset: this host and Redis share a clock here
        (offset,) = store.clock_offsets_ms
        spin = asyncio.create_task(other.eval(_SPIN, 0, 1000))  # Redis stalls for 1 s, less than the timeout
        await asyncio.sleep(0.05)
        stale = await store.record_decisions([store.decision_entry(records[0], due)], 0)
        await spin
        store.clock_offsets_ms[0] = -10_000  # as if Redis's clock were 10 s behind this host's: the deadline follows
        behind = await store.record_decisions([store.decision_entry(records[1], due)], 0)
        stored = int(await other.zcard(store.due_keys[0]))
        await store.client.aclose()
        await other.aclose()
        return stale, behind, stored, offset

    stale, behind, stored, offset = asyncio.run(scenario())
    assert abs(offset) < 500, offset
    assert isinstance(stale[0], DecisionsStale) and isinstance(behind[0], DecisionsStale), (stale, behind)
    assert stored == 0


def test_each_shard_s_deadline_follows_the_clock_of_the_node_holding_it(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    """On a cluster each shard's node checks its own deadlines: one offset measured on one node misplaced the
    deadlines of the others by their clocks' difference (refusing all their decisions when one ran ahead)."""
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 24)

    async def scenario() -> tuple[list[int], list[Exception | None], Store]:
        store = Store(aioredis.Redis.from_url(clean_redis), shards=3)
        await store.probe()
        measured = list(store.clock_offsets_ms)
        store.clock_offsets_ms[1] = -10_000  # as if shard 1's node ran 10 s behind this host
        due = int(time.time() * 1000) + 60_000
        errors = await store.record_decisions([store.decision_entry(r, due) for r in records], 0)
        await store.client.aclose()
        return measured, errors, store

    measured, errors, store = asyncio.run(scenario())
    assert len(measured) == 3 and all(abs(m) < 500 for m in measured), measured
    shards = [store.shard_of(r["event_id"]) for r in records]
    assert set(shards) == {0, 1, 2}
    for shard, error in zip(shards, errors, strict=True):
        assert isinstance(error, DecisionsStale) if shard == 1 else error is None, (shard, error)


def test_unrecord_decisions_withdraws_stored_ones_across_shards_in_one_call_each(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    records = _decisions(make_settings(index_dir, clean_redis, tmp_path / "logs"), index, 12)

    async def scenario() -> tuple[int, int, list[int]]:
        store = Store(aioredis.Redis.from_url(clean_redis), shards=4)
        writer = DecisionWriter(store, stream_maxlen=0, ttl_s=600)
        due = int(time.time() * 1000) + 60_000
        await asyncio.gather(*(writer.write(r, due) for r in records))
        ids = [r["event_id"] for r in records]
        withdrawn = await store.unrecord_decisions([*ids[:8], "never-stored", ids[0]])
        again = await store.unrecord_decisions(ids[:8])
        left = [int(await store.client.exists(store.pending_key(i))) for i in ids]
        await store.client.aclose()
        return withdrawn, again, left

    withdrawn, again, left = asyncio.run(scenario())
    assert (withdrawn, again) == (8, 0)  # an unknown id and a repeat are skipped; withdrawing twice is a no-op
    assert left == [0] * 8 + [1] * 4
