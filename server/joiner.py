"""The joiner: closes each decision once its reward window has passed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from server.settings import JoinSettings
from server.store import Store, now_ms

log = logging.getLogger(__name__)


async def run_joiner(store: Store, settings: JoinSettings, stop: asyncio.Event) -> None:
    """Join due decisions until ``stop`` is set; a decision's slots without a reward get the default reward."""
    while not stop.is_set():
        joined = await store.join_due(now_ms(), settings.batch, settings.closed_ttl_s)
        if joined:
            log.debug("joined %d decisions", joined)
        if joined < settings.batch:
            await _sleep(stop, settings.poll_interval_s)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
