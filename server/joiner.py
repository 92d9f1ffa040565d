"""The joiner: closes each decision once its reward window has passed."""

from __future__ import annotations

import logging

from server.settings import JoinSettings
from server.store import Store, now_ms

log = logging.getLogger(__name__)


class Joiner:
    """Joins due decisions; a decision's slots without a reward get the default reward.

    Any number of joiners may share one Redis: the join is one Lua script, so each decision is joined once.
    """

    def __init__(self, store: Store, settings: JoinSettings) -> None:
        self.store, self.settings = store, settings
        self.joined = 0

    async def step(self) -> float:
        """Join one batch; returns the seconds to wait before the next (0 when a full batch was due)."""
        s = self.settings
        due = await self.store.join_due(now_ms(), s.batch, s.closed_ttl_s, s.joined_stream_maxlen)
        self.joined += due
        if due:
            log.debug("joined %d decisions", due)
        return 0.0 if due >= s.batch else s.poll_interval_s
