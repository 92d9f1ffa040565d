"""Scout's shared state in Redis: decisions awaiting their rewards, the join, streams and policy snapshots.

Decisions are spread over ``shards`` (``redis_shards``): decision ``e`` belongs to shard
``crc32(e) mod shards``, and each shard's keys share the hash tag ``{p:<shard>}`` (``{p}`` with one shard, where
``p`` is ``key_prefix``), so a Redis Cluster spreads the shards over its slots while every script still touches
one slot. Per shard, each key bounded by a TTL or a trim:

- ``{s}:pending:<event_id>``: hash with the decision JSON, its served items and one ``r:<item_id>`` per reward;
  expires ``join.pending_ttl_s`` after the decision (far beyond the window: only a joiner down that long loses it);
- ``{s}:due``: sorted set of pending event ids by the time their reward window closes (joining removes them);
- ``{s}:closed:<event_id>``: a joined decision's served items and its late rewards, for ``join.closed_ttl_s``;
- ``{s}:decisions``: optional stream of decision ids as made, for real-time consumers
  (``join.decision_stream_maxlen``, 0 = off); the decision itself is stored once, in its pending hash;
- ``{s}:joined``: stream of joined decisions, read by the learner and the exporters; trimmed below what both have
  consumed and capped at ``join.joined_stream_maxlen``;
- ``{s}:late``: stream of rewards that arrived after their decision was joined (capped at
  ``join.late_stream_maxlen``);
- ``{s}:joined:claim:<consumer>``, ``{s}:late:claim:<consumer>``: which exporter is claiming a dead consumer's
  entries (expires after ``export.consumer_ttl_s`` unless renewed; deleted with the consumer).

Shared by all shards, under the hash tag ``{p}``:

- ``{p}:policy:<experiment>:<variant>``: the latest policy snapshot (``version``, ``state``); a variant reset to
  generation ``g > 0`` by config publishes under ``...:<variant>#g<g>`` instead;
- ``{p}:learner``: per shard, the id of the last joined entry the published snapshots include (``position``,
  comma-separated in shard order) and how many entries were applied and skipped as poisonous (``applied``,
  ``skipped``); ``{p}:learner:lease``: which learner may publish (expires unless renewed);
- ``{p}:paused``: paused variants; ``{s}:health`` (per shard): the health checks' write probe (expires after 60 s);
- ``{p}:alive:<dataset>:<shard><consumer>``: an exporter's heartbeat (expires); ``{p}:export:inflight``: per
  exporter (same field), the files it is writing before acknowledging them; an exporter records them only while its
  heartbeat is live, in one script with refreshing it.

Recording a decision, accepting a reward, joining and publishing are each one Lua script that declares every key
it touches, so they are atomic: a reward is either recorded before its decision is joined or kept as late, each
decision is joined exactly once even with several joiners, and only the learner holding the lease, from the
positions it read, can publish. The number of shards must not change while decisions are pending (drain first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from server.settings import Settings

log = logging.getLogger(__name__)

# KEYS: due, decision stream, then each decision's pending key; ARGV: stream cap, TTL (ms), deadline (epoch ms on
# Redis's clock), then five per decision: its JSON, served items, due time, event id, reward aggregation. A batch
# that reaches Redis after its deadline, when its caller has given up (a stalled Redis runs its queued calls when it
# wakes, in no set order, so a withdrawal may come after the joiner), stores nothing. Only a script's first write
# can be refused for memory (Redis does not stop a script midway for it), so a batch refused for memory stores
# nothing too.
_RECORD = """
redis.replicate_commands()  -- writes after TIME (Redis 5-6 with lua-replicate-commands off; a no-op on 7)
local cap, ttl = tonumber(ARGV[1]), ARGV[2]
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
  return redis.error_reply('STALE the decisions reached Redis after their deadline; none stored')
end
for i = 3, #KEYS do
  local a = 5 * i - 11
  redis.call('HSET', KEYS[i], 'decision', ARGV[a], 'items', ARGV[a + 1], 'agg', ARGV[a + 4])
  redis.call('PEXPIRE', KEYS[i], ttl)
  redis.call('ZADD', KEYS[1], ARGV[a + 2], ARGV[a + 3])
  if cap > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', 'event_id', ARGV[a + 3])
  end
end
return #KEYS - 2
"""

_UNRECORD = """
local withdrawn = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('DEL', KEYS[i + 1])
    withdrawn = withdrawn + 1
  end
end
return withdrawn
"""

_REWARD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind == 'string' then return -2 end
  if kind == 'hash' then
    local items = redis.call('HGET', KEYS[2], 'items') or ''
    if not string.find(items, '\\n' .. ARGV[1] .. '\\n', 1, true) then return -3 end
    if redis.call('HSETNX', KEYS[2], 'l:' .. ARGV[1], ARGV[2]) == 0 then return 2 end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event_id', ARGV[5], 'item_id', ARGV[1],
               'value', ARGV[2], 'received_at', ARGV[3])
    return 3
  end
  return -1
end
local items = redis.call('HGET', KEYS[1], 'items')
if not string.find(items, '\\n' .. ARGV[1] .. '\\n', 1, true) then return -3 end
if ARGV[6] ~= '' and redis.call('HSETNX', KEYS[1], 'k:' .. ARGV[6], '1') == 0 then return 0 end
local agg = redis.call('HGET', KEYS[1], 'agg') or 'first'
local field = 'r:' .. ARGV[1]
if agg == 'sum' then
  redis.call('HINCRBYFLOAT', KEYS[1], field, ARGV[2])
  return 1
end
if agg == 'max' then
  local current = redis.call('HGET', KEYS[1], field)
  if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
  redis.call('HSET', KEYS[1], field, ARGV[2])
  return 1
end
return redis.call('HSETNX', KEYS[1], field, ARGV[2])
"""

_EXPOSE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSETNX', KEYS[1], 'exposed', ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
return -1
"""

# KEYS: due, joined, then each id's pending and closed keys; ARGV: now, closed TTL, stream cap, then the ids. An id
# another joiner already took is no longer in the due set, so each decision is joined once.
_JOIN = """
local joined = 0
for i = 4, #ARGV do
  local id, key, closed = ARGV[i], KEYS[2 * i - 5], KEYS[2 * i - 4]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event_id', id, 'joined_at', ARGV[1], unpack(fields))
      redis.call('HSET', closed, 'items', redis.call('HGET', key, 'items'))
      redis.call('EXPIRE', closed, tonumber(ARGV[2]))
      joined = joined + 1
    end
    redis.call('DEL', key)
  end
end
return joined
"""

_PUBLISH = """
local owner = redis.call('GET', KEYS[2])
if owner ~= ARGV[1] then return -1 end
local position = redis.call('HGET', KEYS[1], 'position') or '0-0'
if position ~= ARGV[2] then return -2 end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'version', ARGV[2 * i + 1], 'state', ARGV[2 * i + 2])
end
redis.call('HSET', KEYS[1], 'position', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'applied', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[6])
return 1
"""

_LEASE = """
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_EXPORTING = """
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'XX') then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

_ENTRIES = """
local out = {}
for i, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  out[i] = found[1] or false
end
return out
"""

_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local acked = tonumber(ARGV[4])
if acked > 0 then
  redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, 5, 4 + acked))
end
if #ARGV > 4 + acked then
  return redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[1], 0, unpack(ARGV, 5 + acked))
end
return {}
"""

_FORGET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if #redis.call('XPENDING', KEYS[2], ARGV[2], '-', '+', 1, ARGV[3]) > 0 then
  return -2
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[2], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 0
"""

_TIME = """
return redis.call('TIME')
"""

#: How long a Redis call waits for its reply (s): a stalled Redis surfaces as an error after it.
SOCKET_TIMEOUT_S = 5.0
#: Decisions Redis runs later than this after they were sent are not stored: below the socket timeout, so that one
#: Redis runs just before its deadline still answers its caller in time.
RECORD_WITHIN_S = SOCKET_TIMEOUT_S - 1.0
#: The consumer group that exports the joined decisions.
EXPORTER_GROUP = "exporter"
ACCEPTED, DUPLICATE, UNKNOWN, CLOSED, NOT_IN_SLATE = 1, 0, -1, -2, -3
LATE, LATE_DUPLICATE = 3, 2
#: Publishing outcomes of :meth:`Store.publish`.
PUBLISHED, LEASE_LOST, POSITION_MOVED = 1, -1, -2


class DecisionsStale(redis.TimeoutError):
    """Redis ran a batch of decisions after its deadline and stored none of them: as a timeout, nothing to undo."""


@dataclass(frozen=True)
class DecisionEntry:
    """A decision serialized for storing: its shard, its event id and the recording script's five arguments."""

    shard: int
    event_id: str
    args: tuple[bytes, str, int, str, str]

    @property
    def due_ms(self) -> int:
        """When its reward window closes (epoch ms)."""
        return self.args[2]


class Store:
    """Async access to Scout's Redis state.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client (see :func:`redis_client`).
    prefix
        Key prefix (used as a hash tag).
    shards
        How many shards the decisions are spread over (1: every key under the one hash tag ``{prefix}``).
    record_within_s
        Decisions that Redis runs later than this after they were sent are not stored (:class:`DecisionsStale`):
        keep it below the client's socket timeout, after which their caller has given up. The deadline is set on
        Redis's clock, through the offset :meth:`probe` measures.
    """

    def __init__(
        self, client: Any, prefix: str = "scout", shards: int = 1, record_within_s: float = RECORD_WITHIN_S
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        if not record_within_s > 0:
            raise ValueError(f"record_within_s must be positive, got {record_within_s}")
        self.client = client
        self.record_within_ms = int(record_within_s * 1000)
        #: Per shard, its Redis node's clock minus this host's (ms), as the last :meth:`probe` measured it.
        self.clock_offsets_ms = [0] * shards
        self.shards = shards
        self.prefix = f"{{{prefix}}}"
        tags = [self.prefix] if shards == 1 else [f"{{{prefix}:{k}}}" for k in range(shards)]
        self._tags = tags
        self.due_keys = tuple(f"{t}:due" for t in tags)
        self.decision_keys = tuple(f"{t}:decisions" for t in tags)
        self.joined_keys = tuple(f"{t}:joined" for t in tags)
        self.late_keys = tuple(f"{t}:late" for t in tags)
        self.learner = f"{self.prefix}:learner"
        self.lease = f"{self.prefix}:learner:lease"
        self.inflight = f"{self.prefix}:export:inflight"
        self.paused_key = f"{self.prefix}:paused"
        self.health_keys = tuple(f"{t}:health" for t in tags)
        self._record = client.register_script(_RECORD)
        self._unrecord = client.register_script(_UNRECORD)
        self._reward = client.register_script(_REWARD)
        self._join = client.register_script(_JOIN)
        self._expose = client.register_script(_EXPOSE)
        self._publish = client.register_script(_PUBLISH)
        self._lease = client.register_script(_LEASE)
        self._exporting = client.register_script(_EXPORTING)
        self._entries = client.register_script(_ENTRIES)
        self._claim = client.register_script(_CLAIM)
        self._forget = client.register_script(_FORGET)
        self._time = client.register_script(_TIME)

    def shard_of(self, event_id: str) -> int:
        """The shard a decision's keys live in."""
        return 0 if self.shards == 1 else zlib.crc32(event_id.encode()) % self.shards

    def pending_key(self, event_id: str, shard: int | None = None) -> str:
        """Key of a decision waiting for its window to close (``shard``: its shard, when already known)."""
        return f"{self._tags[self.shard_of(event_id) if shard is None else shard]}:pending:{event_id}"

    def closed_key(self, event_id: str) -> str:
        """Key of a joined decision's served items and late rewards."""
        return f"{self._tags[self.shard_of(event_id)]}:closed:{event_id}"

    def alive_key(self, member: str) -> str:
        """Heartbeat key of an exporter (``member``: its dataset, shard and consumer name, as in the in-flight hash)."""
        return f"{self.prefix}:alive:{member}"

    async def exporting(self, member: str, ttl_ms: int, paths: Sequence[str]) -> bool:
        """Refresh an exporter's heartbeat and record the files it is about to write, only if the heartbeat is live.

        False when it had expired: another exporter may already have claimed its entries, so it must not write them.
        """
        keys = [self.alive_key(member), self.inflight]
        return bool(await self._exporting(keys=keys, args=[ttl_ms, member, "\n".join(paths)]))

    @staticmethod
    def claim_key(stream: str, dead: str) -> str:
        """Lock of the exporter claiming ``dead``'s entries of ``stream`` (under the stream's hash tag)."""
        return f"{stream}:claim:{dead}"

    async def lock_claim(self, stream: str, dead: str, claimer: str, ttl_ms: int) -> bool:
        """Become the one exporter claiming ``dead``'s entries of ``stream`` for ``ttl_ms`` (renewed by each claim)."""
        return bool(await self.client.set(self.claim_key(stream, dead), claimer, nx=True, px=ttl_ms))

    async def entries(self, stream: str, ids: Sequence[Any]) -> list[dict[bytes, bytes] | None]:
        """The fields of ``stream``'s entries ``ids`` (None for one trimmed away), in one call, claiming nothing."""
        reply: Any = await self._entries(keys=[stream], args=list(ids))
        return [_fields(entry[1]) if entry else None for entry in reply]

    async def claim(
        self, stream: str, group: str, dead: str, claimer: str, ttl_ms: int, ack: Sequence[Any], take: Sequence[Any]
    ) -> list[tuple[bytes, dict[bytes, bytes] | None]] | None:
        """Acknowledge ``ack`` and move ``take`` from ``dead`` to ``claimer`` in one step, while holding the lock.

        None when ``claimer`` does not hold the claim lock (nothing done). Acknowledging and taking together means
        a claimer that pauses after this step leaves nothing it meant to acknowledge among its own pending entries,
        where a claimer of it would export them again. Entries trimmed from the stream meanwhile come back without
        fields, or not at all.
        """
        keys = [self.claim_key(stream, dead), stream]
        reply: Any = await self._claim(keys=keys, args=[claimer, ttl_ms, group, len(ack), *ack, *take])
        if reply is None:
            return None
        return [(entry[0], _fields(entry[1])) for entry in reply if entry]

    async def forget(self, stream: str, group: str, dead: str, claimer: str) -> bool:
        """Delete ``dead`` from ``group`` and release the claim lock, if ``claimer`` holds it and none are pending."""
        keys = [self.claim_key(stream, dead), stream]
        return int(await self._forget(keys=keys, args=[claimer, group, dead])) == 0

    async def record_decision(
        self, decision: dict[str, Any], due_ms: int, stream_maxlen: int, ttl_s: float = 7 * 86400
    ) -> None:
        """Store a decision for joining at ``due_ms`` (epoch ms), expiring ``ttl_s`` after now if never joined."""
        error = (await self.record_decisions([self.decision_entry(decision, due_ms)], stream_maxlen, ttl_s))[0]
        if error is not None:
            raise error

    def decision_entry(self, decision: dict[str, Any], due_ms: int) -> DecisionEntry:
        """A decision serialized for :meth:`record_decisions`: its shard, event id and the script's five arguments."""
        event_id = decision["event_id"]
        return DecisionEntry(
            self.shard_of(event_id),
            event_id,
            (
                orjson.dumps(decision, option=orjson.OPT_SERIALIZE_NUMPY),  # ~14x json.dumps; never non-finite
                "\n" + "\n".join(decision["item_ids"]) + "\n",
                due_ms,
                event_id,
                decision.get("reward_aggregation", "first"),
            ),
        )

    async def record_decisions(
        self, entries: Sequence[DecisionEntry], stream_maxlen: int, ttl_s: float = 7 * 86400
    ) -> list[Exception | None]:
        """Store decisions (from :meth:`decision_entry`) as :meth:`record_decision` does, one Redis call per shard.

        The result holds, per decision, None or the error of its shard's call. A call Redis runs more than
        ``record_within_s`` after it was sent stores nothing and fails with :class:`DecisionsStale`.
        """
        by_shard: dict[int, list[int]] = {}
        for k, entry in enumerate(entries):
            by_shard.setdefault(entry.shard, []).append(k)
        ttl_ms = int(ttl_s * 1000)

        async def shard_call(shard: int, members: list[int]) -> None:
            keys = [self.due_keys[shard], self.decision_keys[shard]]
            deadline = now_ms() + self.clock_offsets_ms[shard] + self.record_within_ms
            args: list[Any] = [stream_maxlen, ttl_ms, deadline]
            for k in members:
                keys.append(self.pending_key(entries[k].event_id, shard))
                args += entries[k].args
            try:
                await self._record(keys=keys, args=args)
            except redis.ResponseError as exc:
                if str(exc).startswith("STALE"):  # run too late to count: the outage its caller times out on
                    raise DecisionsStale(str(exc)) from exc
                raise

        shards = list(by_shard.items())
        if len(shards) == 1:
            outcomes: list[BaseException | None] = [None]
            try:
                await shard_call(*shards[0])
            except Exception as exc:
                outcomes[0] = exc
        else:
            outcomes = await asyncio.gather(*(shard_call(s, m) for s, m in shards), return_exceptions=True)
        errors: list[Exception | None] = [None] * len(entries)
        for (_, members), outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation and the like are not a shard's failure
            for k in members:
                errors[k] = outcome
        return errors

    async def unrecord_decision(self, event_id: str) -> bool:
        """Withdraw a decision that was never delivered (not yet joined); True when it was withdrawn."""
        return await self.unrecord_decisions([event_id]) == 1

    async def unrecord_decisions(self, event_ids: Sequence[str]) -> int:
        """Withdraw decisions never delivered (those stored and not yet joined), one Redis call per shard.

        Returns how many were withdrawn.
        """
        by_shard: dict[int, list[str]] = {}
        for event_id in event_ids:
            by_shard.setdefault(self.shard_of(event_id), []).append(event_id)
        withdrawn = 0
        for shard, ids in by_shard.items():
            keys = [self.due_keys[shard], *(self.pending_key(i, shard) for i in ids)]
            withdrawn += int(await self._unrecord(keys=keys, args=ids))
        return withdrawn

    async def record_reward(
        self, event_id: str, item_id: str, value: float, late_maxlen: int = 100000, reward_id: str = ""
    ) -> int:
        """Record a reward: ``ACCEPTED``, ``DUPLICATE``, ``LATE``, ``LATE_DUPLICATE``, ``UNKNOWN`` or ``NOT_IN_SLATE``.

        Rewards for one item combine as the decision's ``reward_aggregation`` says: ``first`` keeps the first
        (later ones are ``DUPLICATE``), ``sum`` adds them, ``max`` keeps the largest (one that is not larger is
        ``DUPLICATE``). A ``reward_id`` already recorded for the event is ``DUPLICATE`` whatever the aggregation,
        so retries cannot add twice. A reward for a decision already joined (but closed less than
        ``join.closed_ttl_s`` ago) is appended once per (event, item) to the late stream and answered ``LATE``; it
        never enters training.
        """
        late = self.late_keys[self.shard_of(event_id)]
        keys = [self.pending_key(event_id), self.closed_key(event_id), late]
        args: list[str | int] = [item_id, repr(float(value)), now_ms(), late_maxlen, event_id, reward_id]
        return int(await self._reward(keys=keys, args=args))

    async def record_exposure(self, event_id: str) -> int:
        """Mark a pending decision exposed: ``ACCEPTED``, ``DUPLICATE``, ``UNKNOWN`` or ``CLOSED`` (window closed)."""
        keys = [self.pending_key(event_id), self.closed_key(event_id)]
        return int(await self._expose(keys=keys, args=[now_ms()]))

    async def join_shard(
        self, shard: int, now: int, limit: int, closed_ttl_s: int, joined_maxlen: int = 1_000_000
    ) -> int:
        """Join up to ``limit`` decisions of ``shard`` whose window closed by ``now`` (epoch ms); returns how many.

        The due ids are read first, then joined by one script that declares each one's keys and skips any id another
        joiner took in between.
        """
        due = self.due_keys[shard]
        raw: Any = await self.client.zrangebyscore(due, "-inf", now, start=0, num=limit)
        if not raw:
            return 0
        ids = [i.decode() for i in raw]
        keys = [due, self.joined_keys[shard]]
        for event_id in ids:
            keys += [self.pending_key(event_id), self.closed_key(event_id)]
        await self._join(keys=keys, args=[now, closed_ttl_s, joined_maxlen, *ids])
        return len(ids)

    async def join_due(self, now: int, limit: int, closed_ttl_s: int, joined_maxlen: int = 1_000_000) -> int:
        """Join up to ``limit`` due decisions per shard (see :meth:`join_shard`); returns how many were due."""
        total = 0
        for shard in range(self.shards):
            total += await self.join_shard(shard, now, limit, closed_ttl_s, joined_maxlen)
        return total

    async def pending_count(self) -> int:
        """Decisions still waiting for their reward window to close."""
        total = 0
        for due in self.due_keys:
            total += int(await self.client.zcard(due))
        return total

    async def positions(self) -> tuple[str, list[str]]:
        """The learner's published position as stored (``"0-0"`` before any) and parsed: one stream id per shard."""
        raw: Any = await self.client.hget(self.learner, "position")
        text = raw.decode() if raw else "0-0"
        return text, parse_positions(text, self.shards)

    async def learner_caught_up(self) -> bool:
        """Whether the learner's published snapshots include every decision joined so far, in every shard."""
        _, positions = await self.positions()
        for stream, position in zip(self.joined_keys, positions, strict=True):
            if await self.client.exists(stream):
                info: Any = await self.client.xinfo_stream(stream)
                last = info["last-generated-id"]
                if (last.decode() if isinstance(last, bytes) else str(last)) != position:
                    return False
        return True

    async def probe(self) -> None:
        """Raise unless Redis takes a write under every shard's tag now; measure each shard's clock offset.

        A ping passes on a Redis at its memory cap, which refuses every write; on a cluster each shard's node is
        written to. The offsets (``TIME`` run by each shard's node, against the midpoint of the call here, when it
        answers within 0.1 s) set decisions' deadlines on the clock of the node that checks them; a warning is
        logged when one passes 1 s. On a cluster the nodes' clocks may differ from each other.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.health_keys:
                pipe.set(key, b"1", px=60_000)
            await pipe.execute()
        for shard, key in enumerate(self.health_keys):
            sent = time.time()
            seconds, micros = await self._time(keys=[key])  # routed to the node holding this shard
            answered = time.time()
            if answered - sent > 0.1:  # a slow answer places the clock only within half of it: keep the last one
                continue
            offset = round((int(seconds) + int(micros) / 1e6 - (sent + answered) / 2) * 1000)
            if abs(offset) > 1000 and abs(self.clock_offsets_ms[shard]) <= 1000:
                log.warning(
                    "the clock of the Redis holding shard %d is %+d ms from this host's: its deadlines follow it",
                    shard,
                    offset,
                )
            self.clock_offsets_ms[shard] = offset

    async def lags(self) -> tuple[int, float, float]:
        """Pending decisions, join lag and learner lag (seconds), for metrics.

        Join lag is how far the oldest pending decision is past its due time (0 when the joiner keeps up); learner
        lag is how much older the learner's stream position is than the newest joined decision (worst shard).
        """
        async with self.client.pipeline(transaction=False) as pipe:  # one round trip (per node on a cluster)
            pipe.hget(self.learner, "position")
            for shard in range(self.shards):
                pipe.zcard(self.due_keys[shard])
                pipe.zrange(self.due_keys[shard], 0, 0, withscores=True)
                pipe.xrevrange(self.joined_keys[shard], count=1)
                pipe.xrange(self.joined_keys[shard], count=1)
            replies = await pipe.execute()
        raw = replies[0]
        positions = parse_positions(raw.decode() if raw else "0-0", self.shards)
        pending, join_lag, learner_lag = 0, 0.0, 0.0
        for shard in range(self.shards):
            count, oldest, newest, first = replies[1 + 4 * shard : 5 + 4 * shard]
            pending += int(count)
            if oldest:
                join_lag = max(join_lag, (now_ms() - oldest[0][1]) / 1000)
            if newest:
                newest_ms = int(newest[0][0].split(b"-")[0])
                position_ms = int(positions[shard].split("-")[0])
                if position_ms == 0:  # nothing applied yet: everything joined so far is behind
                    position_ms = int(first[0][0].split(b"-")[0]) - 1
                learner_lag = max(learner_lag, (newest_ms - position_ms) / 1000)
        return pending, join_lag, learner_lag

    async def export_lag(self, group: str = EXPORTER_GROUP) -> float:
        """How long the oldest joined decision not yet exported (acknowledged by ``group``) has waited (worst shard).

        Exporters hold entries until a file rolls (``export.flush_interval_s``), so it normally stays below that;
        it grows without bound while no exporter can write (a full disk, a dead worker, none started).
        """
        lags = await asyncio.gather(*(self._export_lag(stream, group) for stream in self.joined_keys))
        return max(lags, default=0.0)

    async def _export_lag(self, stream: str, group: str) -> float:
        """:meth:`export_lag` of one shard's joined stream (the shards are read concurrently)."""
        try:
            summary: Any = await self.client.xpending(stream, group)
            groups: Any = await self.client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream (nothing joined), or no exporter yet: all of it waits
            first: Any = await self.client.xrange(stream, count=1)
            return (now_ms() - stream_id(_bytes(first[0][0]).decode())[0]) / 1000 if first else 0.0
        oldest = summary["min"] if summary["pending"] else None
        if oldest is None:  # none read and unacknowledged: the first entry the group has not read yet
            names = (group, group.encode())
            last = next((g["last-delivered-id"] for g in groups if g["name"] in names), None)
            after: Any = await self.client.xrange(stream, min=b"(" + _bytes(last), count=1) if last else []
            oldest = after[0][0] if after else None
        return 0.0 if oldest is None else (now_ms() - stream_id(_bytes(oldest).decode())[0]) / 1000

    async def set_paused(self, experiment: str, variant: str, paused: bool) -> None:
        """Pause (or resume) a variant for every process sharing this Redis."""
        field = f"{experiment}\t{variant}"
        if paused:
            await self.client.hset(self.paused_key, field, "1")
        else:
            await self.client.hdel(self.paused_key, field)

    async def paused(self) -> frozenset[tuple[str, str]]:
        """The paused (experiment, variant) pairs."""
        fields: Any = await self.client.hkeys(self.paused_key)
        return frozenset(tuple(f.decode().split("\t", 1)) for f in fields)

    def policy_key(self, experiment: str, variant: str, generation: int = 0) -> str:
        """Key of a variant's policy snapshot (of one generation: a reset by config starts a new key)."""
        suffix = f"#g{generation}" if generation else ""
        return f"{self.prefix}:policy:{experiment}:{variant}{suffix}"

    async def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        """Take or renew the learner lease for ``owner``; False while another learner holds it."""
        return bool(await self._lease(keys=[self.lease], args=[owner, int(ttl_s * 1000)]))

    async def publish(
        self,
        owner: str,
        expected: str,
        position: str,
        snapshots: list[tuple[str, int, bytes]],
        ttl_s: float,
        applied: int = 0,
        skipped: int = 0,
    ) -> int:
        """Publish snapshots and the new learner position, if ``owner`` holds the lease and nobody moved it.

        ``applied`` and ``skipped`` add to the learner's counters (``HGET {p}:learner applied|skipped``).
        Returns ``PUBLISHED``, ``LEASE_LOST`` or ``POSITION_MOVED`` (the position is no longer ``expected``).
        """
        keys = [self.learner, self.lease]
        args: list[Any] = [owner, expected, position, int(ttl_s * 1000), applied, skipped]
        for key, version, state in snapshots:
            keys.append(key)
            args += [version, state]
        return int(await self._publish(keys=keys, args=args))


def parse_positions(text: str, shards: int) -> list[str]:
    """One stream id per shard from the learner's stored position (``"0-0"``: nothing applied in any shard)."""
    if text == "0-0":
        return ["0-0"] * shards
    positions = text.split(",")
    if len(positions) != shards:
        raise ValueError(
            f"the learner's position {text!r} names {len(positions)} shard(s) but redis_shards is {shards}: the "
            "shard count changed while decisions were in flight (drain and reset the learner before changing it)"
        )
    return positions


def redis_client(url: str, cluster: bool = False) -> Any:
    """An asyncio Redis (or Redis Cluster) client with timeouts, so a stalled Redis surfaces as an error."""
    if cluster:
        return aioredis.RedisCluster.from_url(url, socket_connect_timeout=2.0, socket_timeout=SOCKET_TIMEOUT_S)
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=10
    )


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes] | None:
    """A stream entry's fields from a script's flat reply (None when it has none: trimmed away)."""
    return dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a pair that sorts like the ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def settings_store(settings: Settings, url: str) -> Store:
    """The store for ``settings`` (prefix, cluster mode and shards) over the Redis at ``url``."""
    return Store(redis_client(url, settings.redis_cluster), settings.key_prefix, settings.shards)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def joined_record(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A joined stream entry as a log record (see ``offline_eval.logs``): the decision plus its rewards per slot."""
    try:
        record: dict[str, Any] = orjson.loads(fields[b"decision"])
    except orjson.JSONDecodeError:  # NaN/Infinity literals (json.dumps writes them): the standard parser takes them
        record = json.loads(fields[b"decision"])
    rewards = {k[2:].decode(): float(v) for k, v in fields.items() if k.startswith(b"r:")}
    record["rewards"] = [rewards.get(item, record["default_reward"]) for item in record["item_ids"]]
    record["reward_observed"] = [item in rewards for item in record["item_ids"]]
    record["joined_at"] = int(fields[b"joined_at"])
    record["exposed"] = b"exposed" in fields
    return record
