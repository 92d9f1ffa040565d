"""Scout's shared state in Redis: decisions awaiting their rewards, the join, streams and policy snapshots.

Keys (all under one hash tag, so a Redis Cluster keeps them in one slot), each bounded by a TTL or a trim:

- ``{p}:pending:<event_id>``: hash with the decision JSON, its served items and one ``r:<item_id>`` per reward;
  expires ``join.pending_ttl_s`` after the decision (far beyond the window: only a joiner down that long loses it);
- ``{p}:due``: sorted set of pending event ids by the time their reward window closes (joining removes them);
- ``{p}:closed:<event_id>``: a joined decision's served items and its late rewards, for ``join.closed_ttl_s``;
- ``{p}:decisions``: optional stream of decision ids as made, for real-time consumers (``join.decision_stream_maxlen``,
  0 = off); the decision itself is stored once, in its pending hash;
- ``{p}:joined``: stream of joined decisions, read by the learner and the exporters; trimmed below what both have
  consumed and capped at ``join.joined_stream_maxlen``;
- ``{p}:late``: stream of rewards that arrived after their decision was joined (capped at ``join.late_stream_maxlen``);
- ``{p}:policy:<experiment>:<variant>``: the latest policy snapshot (``version``, ``state``);
- ``{p}:learner``: the id of the last joined entry the published snapshots include (``position``) and how many
  entries were applied and skipped as poisonous (``applied``, ``skipped``); ``{p}:learner:lease``: which
  learner may publish (expires unless renewed);
- ``{p}:alive:<consumer>``: an exporter's heartbeat (expires); ``{p}:export:inflight``: per exporter, the file it is
  writing before acknowledging it.

Recording a decision, accepting a reward, joining and publishing are each one Lua script, so they are atomic: a
reward is either recorded before its decision is joined or kept as late, each decision is joined exactly once even
with several joiners, and only the learner holding the lease, from the position it read, can publish.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

_RECORD = """
redis.call('HSET', KEYS[1], 'decision', ARGV[1], 'items', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event_id', ARGV[4])
end
return 1
"""

_UNRECORD = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
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
return redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
"""

_EXPOSE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSETNX', KEYS[1], 'exposed', ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
return -1
"""

_JOIN = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local joined = 0
for _, id in ipairs(ids) do
  local key = ARGV[4] .. ':pending:' .. id
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event_id', id, 'joined_at', ARGV[1], unpack(fields))
    local closed = ARGV[4] .. ':closed:' .. id
    redis.call('HSET', closed, 'items', redis.call('HGET', key, 'items'))
    redis.call('EXPIRE', closed, tonumber(ARGV[3]))
    joined = joined + 1
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return {#ids, joined}
"""

_PUBLISH = """
local owner = redis.call('GET', KEYS[2])
if owner ~= ARGV[1] then return -1 end
local position = redis.call('HGET', KEYS[1], 'position') or '0-0'
if position ~= ARGV[2] then return -2 end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
for i = 7, #ARGV, 3 do
  redis.call('HSET', ARGV[i], 'version', ARGV[i + 1], 'state', ARGV[i + 2])
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

ACCEPTED, DUPLICATE, UNKNOWN, CLOSED, NOT_IN_SLATE = 1, 0, -1, -2, -3
LATE, LATE_DUPLICATE = 3, 2
#: Publishing outcomes of :meth:`Store.publish`.
PUBLISHED, LEASE_LOST, POSITION_MOVED = 1, -1, -2


class Store:
    """Async access to Scout's Redis state.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis`` client.
    prefix
        Key prefix (used as a hash tag).
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "scout") -> None:
        self.client = client
        self.prefix = f"{{{prefix}}}"
        self.due = f"{self.prefix}:due"
        self.decisions = f"{self.prefix}:decisions"
        self.joined = f"{self.prefix}:joined"
        self.late = f"{self.prefix}:late"
        self.learner = f"{self.prefix}:learner"
        self.lease = f"{self.prefix}:learner:lease"
        self.inflight = f"{self.prefix}:export:inflight"
        self.paused_key = f"{self.prefix}:paused"
        self._record = client.register_script(_RECORD)
        self._unrecord = client.register_script(_UNRECORD)
        self._reward = client.register_script(_REWARD)
        self._join = client.register_script(_JOIN)
        self._expose = client.register_script(_EXPOSE)
        self._publish = client.register_script(_PUBLISH)
        self._lease = client.register_script(_LEASE)

    def pending_key(self, event_id: str) -> str:
        """Key of a decision waiting for its window to close."""
        return f"{self.prefix}:pending:{event_id}"

    def alive_key(self, consumer: str) -> str:
        """Heartbeat key of an exporter consumer."""
        return f"{self.prefix}:alive:{consumer}"

    async def record_decision(
        self, decision: dict[str, Any], due_ms: int, stream_maxlen: int, ttl_s: float = 7 * 86400
    ) -> None:
        """Store a decision for joining at ``due_ms`` (epoch ms), expiring ``ttl_s`` after now if never joined."""
        event_id = decision["event_id"]
        items = "\n" + "\n".join(decision["item_ids"]) + "\n"
        await self._record(
            keys=[self.pending_key(event_id), self.due, self.decisions],
            args=[
                orjson.dumps(decision, option=orjson.OPT_SERIALIZE_NUMPY),  # ~14x json.dumps; never non-finite
                items,
                due_ms,
                event_id,
                stream_maxlen,
                int(ttl_s * 1000),
            ],
        )

    async def unrecord_decision(self, event_id: str) -> bool:
        """Withdraw a decision that was never delivered (not yet joined); True when it was withdrawn."""
        return bool(await self._unrecord(keys=[self.pending_key(event_id), self.due], args=[event_id]))

    async def record_reward(self, event_id: str, item_id: str, value: float, late_maxlen: int = 100000) -> int:
        """Record a reward: ``ACCEPTED``, ``DUPLICATE``, ``LATE``, ``LATE_DUPLICATE``, ``UNKNOWN`` or ``NOT_IN_SLATE``.

        A reward for a decision already joined (but closed less than ``join.closed_ttl_s`` ago) is appended once per
        (event, item) to the late stream and answered ``LATE``; it never enters training.
        """
        keys = [self.pending_key(event_id), f"{self.prefix}:closed:{event_id}", self.late]
        args: list[str | int] = [item_id, repr(float(value)), now_ms(), late_maxlen, event_id]
        return int(await self._reward(keys=keys, args=args))

    async def record_exposure(self, event_id: str) -> int:
        """Mark a pending decision exposed: ``ACCEPTED``, ``DUPLICATE``, ``UNKNOWN`` or ``CLOSED`` (window closed)."""
        keys = [self.pending_key(event_id), f"{self.prefix}:closed:{event_id}"]
        return int(await self._expose(keys=keys, args=[now_ms()]))

    async def join_due(self, now: int, limit: int, closed_ttl_s: int, joined_maxlen: int = 1_000_000) -> int:
        """Join up to ``limit`` decisions whose window closed by ``now`` (epoch ms); returns how many were due."""
        reply: Any = await self._join(
            keys=[self.due, self.joined], args=[now, limit, closed_ttl_s, self.prefix, joined_maxlen]
        )
        return int(reply[0])

    async def pending_count(self) -> int:
        """Decisions still waiting for their reward window to close."""
        return int(await self.client.zcard(self.due))

    async def lags(self) -> tuple[int, float, float]:
        """Pending decisions, join lag and learner lag (seconds), for metrics.

        Join lag is how far the oldest pending decision is past its due time (0 when the joiner keeps up); learner
        lag is how much older the learner's stream position is than the newest joined decision.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self.due)
            pipe.zrange(self.due, 0, 0, withscores=True)
            pipe.hget(self.learner, "position")
            pipe.xrevrange(self.joined, count=1)
            pipe.xrange(self.joined, count=1)
            pending, oldest, position, newest, first = await pipe.execute()
        join_lag = max(0.0, (now_ms() - oldest[0][1]) / 1000) if oldest else 0.0
        learner_lag = 0.0
        if newest:
            newest_ms = int(newest[0][0].split(b"-")[0])
            position_ms = int((position or b"0-0").split(b"-")[0])
            if position_ms == 0:  # nothing applied yet: everything joined so far is behind
                position_ms = int(first[0][0].split(b"-")[0]) - 1
            learner_lag = max(0.0, (newest_ms - position_ms) / 1000)
        return int(pending), join_lag, learner_lag

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

    def policy_key(self, experiment: str, variant: str) -> str:
        """Key of a variant's policy snapshot."""
        return f"{self.prefix}:policy:{experiment}:{variant}"

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
        args: list[Any] = [owner, expected, position, int(ttl_s * 1000), applied, skipped]
        for key, version, state in snapshots:
            args += [key, version, state]
        return int(await self._publish(keys=[self.learner, self.lease], args=args))


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
