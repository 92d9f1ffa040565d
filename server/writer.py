"""Group commit of decisions: writes that arrive while one is in flight go to Redis together.

At concurrency 1 a decision is written alone, at once, as before. Under load, the decisions made while a write is
in flight wait for it and then go in one Redis call per shard (up to ``max_batch``), so the event loop and Redis
pay one round trip for many decisions instead of one each. Every decision is still stored before its caller
answers: :meth:`DecisionWriter.write` returns only after its own decision is stored.

Decisions stored but never delivered are withdrawn in the background, batched, retrying while Redis does not
answer: those whose caller was cancelled after its batch was sent, and those of a call that was lost or timed out
(Redis can run the script and lose the reply) while its callers answer UNAVAILABLE. A call Redis runs after its
deadline, late after a stall, stores nothing (see :meth:`Store.record_decisions`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import redis

from server.store import DecisionEntry, DecisionsStale, Store, now_ms

log = logging.getLogger(__name__)
#: Most decisions one batch stores.
MAX_BATCH = 128
#: Undelivered decisions are withdrawn until their window closes, and for at least this long.
WITHDRAW_RETRY_MS = 60_000
#: Most decisions waiting to be withdrawn (those beyond it stay as they are: logged or not, unrewarded).
MAX_WITHDRAWING = 100_000
#: Most of them withdrawn per Redis call (and shard).
WITHDRAW_BATCH = 256
_Waiting = tuple[DecisionEntry, asyncio.Future[None]]


class DecisionWriter:
    """Stores decisions in batches for the Recommend handlers of one event loop.

    Parameters
    ----------
    store
        Where decisions go.
    stream_maxlen, ttl_s
        As :meth:`Store.record_decision` takes them.
    max_batch
        Most decisions per batch (one Redis call per shard).
    """

    def __init__(self, store: Store, stream_maxlen: int, ttl_s: float, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.store, self.stream_maxlen, self.ttl_s, self.max_batch = store, stream_maxlen, ttl_s, max_batch
        self._waiting: list[_Waiting] = []
        self._task: asyncio.Task[None] | None = None
        #: Undelivered decisions to withdraw: event id -> when to stop trying (epoch ms).
        self._withdrawing: dict[str, int] = {}
        self._withdraw_task: asyncio.Task[None] | None = None
        #: Batches written and the decisions they stored (batch size = ``decisions / batches``).
        self.batches = 0
        self.decisions = 0

    async def write(self, record: dict[str, Any], due_ms: int) -> None:
        """Store one decision; return once it is stored, or raise what kept its batch from being stored.

        A decision whose caller is cancelled before its batch is sent is dropped; one whose caller is cancelled
        after that is withdrawn once stored (it was never delivered, so it must not stay in the log).
        """
        entry = self.store.decision_entry(record, due_ms)  # a record that does not serialize fails only its caller
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._withdraw(entry)  # stored just before the cancellation reached this caller
            raise

    async def close(self, withdraw_wait_s: float = 2.0) -> None:
        """Wait for the batch in flight, then up to ``withdraw_wait_s`` for pending withdrawals (the server stops).

        Decisions still waiting to be withdrawn after that are named in a warning.
        """
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._withdraw_task is not None and not self._withdraw_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._withdraw_task), withdraw_wait_s)
            except TimeoutError:
                self._withdraw_task.cancel()
                left = list(self._withdrawing)
                log.warning(
                    "stopping with %d undelivered decisions not withdrawn (logged if Redis stored them), e.g. %s",
                    len(left),
                    ", ".join(left[:5]),
                )

    async def _drain(self) -> None:
        """Write the waiting decisions, a batch at a time, until none wait."""
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                live = [(entry, future) for entry, future in self._waiting if not future.cancelled()]
                batch, self._waiting = live[: self.max_batch], live[self.max_batch :]
                if not batch:
                    continue
                errors = await self.store.record_decisions(
                    [entry for entry, _ in batch], self.stream_maxlen, self.ttl_s
                )
                self.batches += 1
                self.decisions += len(batch)
                unreachable = None
                for (entry, future), error in zip(batch, errors, strict=True):
                    if future.cancelled():
                        if error is None:
                            self._withdraw(entry)
                    elif error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                    if isinstance(error, DecisionsStale):
                        continue  # Redis answered: none of the batch was stored, and the waiting may go on
                    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
                        unreachable = error
                        self._withdraw(entry)  # stored or not: its caller fails, so it must not stay
                batch = []
                if unreachable is not None:  # fail fast: the waiting would each wait out another timeout
                    self._fail([], unreachable)
        except Exception as exc:  # not a store error (those come back per decision): its callers fail, never hang
            log.exception("decision writer failed")
            self._fail(batch, exc)
        except BaseException:  # cancelled (the server is stopping): the batch's outcome is unknown; callers retry
            self._fail(batch, redis.ConnectionError("the server stopped while storing the decision"))
            raise

    def _fail(self, batch: list[_Waiting], error: Exception) -> None:
        for _, future in batch + self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting = []

    def _withdraw(self, entry: DecisionEntry) -> None:
        """Withdraw, in the background once Redis answers, a decision that may be stored but was never delivered."""
        if len(self._withdrawing) >= MAX_WITHDRAWING:
            log.warning("too many undelivered decisions to withdraw; %s may stay logged", entry.event_id)
            return
        self._withdrawing[entry.event_id] = max(entry.due_ms, now_ms() + WITHDRAW_RETRY_MS)
        if self._withdraw_task is None or self._withdraw_task.done():
            self._withdraw_task = asyncio.get_running_loop().create_task(self._withdraw_loop())

    async def _withdraw_loop(self) -> None:
        """Withdraw the waiting decisions, a batch at a time, backing off (to 2 s) while Redis does not answer."""
        delay, expired = 0.05, 0
        while self._withdrawing:
            now = now_ms()
            batch = []
            for event_id, until_ms in list(itertools.islice(self._withdrawing.items(), WITHDRAW_BATCH)):
                if now > until_ms:
                    expired += 1
                    del self._withdrawing[event_id]
                else:
                    batch.append(event_id)
            if not batch:
                continue
            try:
                await self.store.unrecord_decisions(batch)  # those not stored (or withdrawn already) are skipped
            except (redis.ConnectionError, redis.TimeoutError):
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            except Exception:  # not an outage: retrying would not help
                log.exception("could not withdraw %d undelivered decisions", len(batch))
            delay = 0.05
            for event_id in batch:
                self._withdrawing.pop(event_id, None)
        if expired:
            log.warning(
                "gave up withdrawing %d undelivered decisions: their windows closed before Redis answered", expired
            )
