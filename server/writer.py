"""Group commit of decisions: writes that arrive while one is in flight go to Redis together.

At concurrency 1 a decision is written alone, at once, as before. Under load, the decisions made while a write is
in flight wait for it and then go in one Redis call per shard (up to ``max_batch``), so the event loop and Redis
pay one round trip for many decisions instead of one each. Every decision is still stored before its caller
answers: :meth:`DecisionWriter.write` returns only after its own decision is stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis

from server.store import Store

log = logging.getLogger(__name__)
#: Most decisions one Redis call stores.
MAX_BATCH = 128


class DecisionWriter:
    """Stores decisions in batches for the Recommend handlers of one event loop.

    Parameters
    ----------
    store
        Where decisions go.
    stream_maxlen, ttl_s
        As :meth:`Store.record_decision` takes them.
    max_batch
        Most decisions per Redis call.
    """

    def __init__(self, store: Store, stream_maxlen: int, ttl_s: float, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.store, self.stream_maxlen, self.ttl_s, self.max_batch = store, stream_maxlen, ttl_s, max_batch
        self._waiting: list[tuple[dict[str, Any], int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        #: Redis calls made and decisions they stored (batch size = ``decisions / calls``).
        self.calls = 0
        self.decisions = 0

    async def write(self, record: dict[str, Any], due_ms: int) -> None:
        """Store one decision; return once it is stored, or raise what kept its batch from being stored.

        If the caller is cancelled while waiting, its decision is withdrawn once stored (never delivered, so it
        must not stay in the log).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, due_ms, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        """Write the waiting decisions, a batch at a time, until none wait."""
        batch: list[tuple[dict[str, Any], int, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                errors = await self.store.record_decisions(
                    [(record, due) for record, due, _ in batch], self.stream_maxlen, self.ttl_s
                )
                self.calls += 1
                self.decisions += len(batch)
                withdraw = []
                for (record, _, future), error in zip(batch, errors, strict=True):
                    if future.cancelled():
                        if error is None:
                            withdraw.append(record["event_id"])
                    elif error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                batch = []
                for event_id in withdraw:
                    await self._withdraw(event_id)
        except Exception as exc:  # not a store error (those come back per decision): its callers fail, never hang
            log.exception("decision writer failed")
            self._fail(batch, exc)
        except BaseException:  # cancelled (the server is stopping): the batch's outcome is unknown; callers retry
            self._fail(batch, redis.ConnectionError("the server stopped while storing the decision"))
            raise
        finally:
            self._task = None

    def _fail(self, batch: list[tuple[dict[str, Any], int, asyncio.Future[None]]], error: Exception) -> None:
        for _, _, future in batch + self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting = []

    async def _withdraw(self, event_id: str) -> None:
        try:
            await self.store.unrecord_decision(event_id)
        except Exception as exc:  # it stays in the log, joined without rewards
            log.warning("could not withdraw undelivered decision %s: %s", event_id, exc)
