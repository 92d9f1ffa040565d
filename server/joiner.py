"""The joiner: closes each decision once its reward window has passed."""

from __future__ import annotations

import logging

from server.settings import JoinSettings
from server.store import Store, now_ms

log = logging.getLogger(__name__)


class Joiner:
    """Joins due decisions, shard by shard; a decision's slots without a reward get the default reward.

    Any number of joiners may share one Redis: the join is one Lua script, so each decision is joined once.
    """

    def __init__(self, store: Store, settings: JoinSettings) -> None:
        self.store, self.settings = store, settings
        self.joined = 0

    async def step(self) -> float:
        """Join one batch; returns the seconds to wait before the next (0 when a full batch was due)."""
        s = self.settings
        now, full = now_ms(), False
        for shard in range(self.store.shards):
            due = await self.store.join_shard(shard, now, s.batch, s.closed_ttl_s, s.joined_stream_maxlen)
            self.joined += due
            full = full or due >= s.batch
            if due:
                log.debug("joined %d decisions of shard %d", due, shard)
        return 0.0 if full else s.poll_interval_s
