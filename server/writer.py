"""Group commit of decisions: writes that arrive while one is in flight go to Redis together.

At concurrency 1 a decision is written alone, at once, as before. Under load, the decisions made while a write is
in flight wait for it and then go in one Redis call per shard (up to ``max_batch``), so the event loop and Redis
pay one round trip for many decisions instead of one each. Every decision is still stored before its caller
answers: :meth:`DecisionWriter.write` returns only after its own decision is stored.

A batch whose call was lost or timed out may still have been stored (Redis can run the script and lose the reply),
while its callers answer UNAVAILABLE. Those decisions were never delivered, so the writer withdraws them in the
background once Redis answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import redis

from server.store import DecisionEntry, Store, now_ms

log = logging.getLogger(__name__)
#: Most decisions one batch stores.
MAX_BATCH = 128
#: Decisions of a lost or timed-out call are withdrawn until their window closes, and for at least this long.
UNSURE_RETRY_MS = 60_000
#: Most such decisions kept for withdrawal (those beyond it stay as they are: logged or not, unrewarded).
MAX_UNSURE = 100_000
#: Most of them withdrawn per Redis call (and shard).
UNSURE_BATCH = 256
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
        self._withdrawals: set[asyncio.Task[None]] = set()
        #: Decisions whose call was lost or timed out: event id -> when to stop trying to withdraw it (epoch ms).
        self._unsure: dict[str, int] = {}
        self._unsure_task: asyncio.Task[None] | None = None
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
                self._withdraw(entry.event_id)  # stored just before the cancellation reached this caller
            raise

    async def close(self, unsure_wait_s: float = 2.0) -> None:
        """Wait for the batch in flight and for pending withdrawals (the server is stopping).

        Decisions of a lost call get ``unsure_wait_s`` to be withdrawn; those left are named in a warning.
        """
        pending = [t for t in (self._task, *self._withdrawals) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._unsure_task is not None and not self._unsure_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._unsure_task), unsure_wait_s)
            except TimeoutError:
                self._unsure_task.cancel()
                left = list(self._unsure)
                log.warning(
                    "stopping with %d decisions of lost Redis calls not withdrawn (logged if Redis ran the call), "
                    "e.g. %s",
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
                            self._withdraw(entry.event_id)
                    elif error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
                        unreachable = error
                        self._withdraw_unsure(entry)  # stored or not: its caller fails, so it must not stay
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

    def _withdraw(self, event_id: str) -> None:
        """Withdraw a stored decision that was never delivered, in the background."""
        task = asyncio.get_running_loop().create_task(self._unrecord(event_id))
        self._withdrawals.add(task)
        task.add_done_callback(self._withdrawals.discard)

    def _withdraw_unsure(self, entry: DecisionEntry) -> None:
        """Withdraw, once Redis answers, a decision whose call was lost: it may have been stored."""
        if len(self._unsure) >= MAX_UNSURE:
            log.warning("too many decisions of lost Redis calls to withdraw; %s may stay logged", entry.event_id)
            return
        self._unsure[entry.event_id] = max(int(entry.args[2]), now_ms() + UNSURE_RETRY_MS)
        if self._unsure_task is None or self._unsure_task.done():
            self._unsure_task = asyncio.get_running_loop().create_task(self._withdraw_unsure_loop())

    async def _withdraw_unsure_loop(self) -> None:
        """Withdraw the unsure decisions, a batch at a time, backing off (to 2 s) while Redis does not answer."""
        delay, done, expired = 0.05, 0, 0
        while self._unsure:
            now = now_ms()
            batch = []
            for event_id, until_ms in list(itertools.islice(self._unsure.items(), UNSURE_BATCH)):
                if now > until_ms:
                    expired += 1
                    del self._unsure[event_id]
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
                log.exception("could not withdraw %d decisions of lost Redis calls", len(batch))
            else:
                done += len(batch)
            delay = 0.05
            for event_id in batch:
                self._unsure.pop(event_id, None)
        log.warning(
            "lost Redis calls: %d of their decisions are withdrawn (if Redis had stored them); gave up on %d (their "
            "windows closed before Redis answered)",
            done,
            expired,
        )

    async def _unrecord(self, event_id: str) -> None:
        try:
            await self.store.unrecord_decision(event_id)
        except Exception as exc:  # it stays in the log, joined without rewards
            log.warning("could not withdraw undelivered decision %s: %s", event_id, exc)
