"""Scout's shared state in Redis: decisions awaiting their rewards, the join, streams and policy snapshots.

Keys (all under one hash tag, so a Redis Cluster keeps them in one slot):

- ``{p}:pending:<event_id>``: hash with the decision JSON, its served items and one ``r:<item_id>`` per reward;
- ``{p}:due``: sorted set of pending event ids by the time their reward window closes;
- ``{p}:closed:<event_id>``: marks a joined decision for ``closed_ttl_s`` (late rewards get FAILED_PRECONDITION);
- ``{p}:decisions``: stream of decisions as made (capped), for real-time consumers;
- ``{p}:joined``: stream of joined decisions, read by the learner and the exporter;
- ``{p}:policy:<experiment>:<variant>``: the latest policy snapshot (``version``, ``state``);
- ``{p}:learner``: the id of the last joined entry the published snapshots include.

Recording a decision, accepting a reward and joining are each one Lua script, so they are atomic: a reward is
either recorded before its decision is joined or refused, and each decision is joined exactly once even with
several joiners.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

_RECORD = """
redis.call('HSET', KEYS[1], 'decision', ARGV[1], 'items', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event_id', ARGV[4], 'decision', ARGV[1])
return 1
"""

_REWARD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
  return -1
end
local items = redis.call('HGET', KEYS[1], 'items')
if not string.find(items, '\\n' .. ARGV[1] .. '\\n', 1, true) then return -3 end
return redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
"""

_JOIN = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = ARGV[4] .. ':pending:' .. id
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], '*', 'event_id', id, 'joined_at', ARGV[1], unpack(fields))
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
  redis.call('SET', ARGV[4] .. ':closed:' .. id, '1', 'EX', tonumber(ARGV[3]))
end
return #ids
"""

ACCEPTED, DUPLICATE, UNKNOWN, CLOSED, NOT_IN_SLATE = 1, 0, -1, -2, -3


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
        self.learner = f"{self.prefix}:learner"
        self._record = client.register_script(_RECORD)
        self._reward = client.register_script(_REWARD)
        self._join = client.register_script(_JOIN)

    async def record_decision(self, decision: dict[str, Any], due_ms: int, stream_maxlen: int) -> None:
        """Store a decision for joining at ``due_ms`` (epoch milliseconds) and append it to the decision stream."""
        event_id = decision["event_id"]
        items = "\n" + "\n".join(decision["item_ids"]) + "\n"
        await self._record(
            keys=[f"{self.prefix}:pending:{event_id}", self.due, self.decisions],
            args=[json.dumps(decision, separators=(",", ":")), items, due_ms, event_id, stream_maxlen],
        )

    async def record_reward(self, event_id: str, item_id: str, value: float) -> int:
        """Record a reward: ``ACCEPTED``, ``DUPLICATE``, ``UNKNOWN``, ``CLOSED`` or ``NOT_IN_SLATE``."""
        keys = [f"{self.prefix}:pending:{event_id}", f"{self.prefix}:closed:{event_id}"]
        return int(await self._reward(keys=keys, args=[item_id, repr(float(value))]))

    async def join_due(self, now_ms: int, limit: int, closed_ttl_s: int) -> int:
        """Join up to ``limit`` decisions whose window closed by ``now_ms``; returns how many were joined."""
        return int(await self._join(keys=[self.due, self.joined], args=[now_ms, limit, closed_ttl_s, self.prefix]))

    async def pending_count(self) -> int:
        """Decisions still waiting for their reward window to close."""
        return int(await self.client.zcard(self.due))

    def policy_key(self, experiment: str, variant: str) -> str:
        """Key of a variant's policy snapshot."""
        return f"{self.prefix}:policy:{experiment}:{variant}"


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def joined_record(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A joined stream entry as a log record (see ``offline_eval.logs``): the decision plus its rewards per slot."""
    record: dict[str, Any] = json.loads(fields[b"decision"])
    rewards = {k[2:].decode(): float(v) for k, v in fields.items() if k.startswith(b"r:")}
    record["rewards"] = [rewards.get(item, record["default_reward"]) for item in record["item_ids"]]
    record["reward_observed"] = [item in rewards for item in record["item_ids"]]
    record["joined_at"] = int(fields[b"joined_at"])
    return record
