"""gRPC handlers: convert the request, call the domain code, convert back; errors map to status codes here."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import redis

from server.errors import FailedPrecondition, InvalidArgument, NotFound, Overloaded, ScoutError
from server.metrics import Metrics
from server.pb import scout_pb2, scout_pb2_grpc
from server.recommender import Recommender, RecommendInput
from server.settings import JoinSettings
from server.store import CLOSED, DUPLICATE, LATE, LATE_DUPLICATE, NOT_IN_SLATE, UNKNOWN, Store
from server.validation import MAX_EVENT_ID_CHARS, Undecodable, check_reward, check_string, echo
from server.writer import DecisionWriter

log = logging.getLogger(__name__)
Response = TypeVar("Response")
#: Most messages one RewardStream call may carry.
MAX_STREAM_REWARDS = 10_000
#: A decision is logged only if at least this long remains of the client's deadline after recording it.
DEADLINE_MARGIN_S = 0.005


#: How an overload refusal's message begins (clients retry it after a backoff; see the README's "Overload").
OVERLOADED = "overloaded:"


#: An outage's per-request log lines: at most one per kind this often (every failed request still counts in metrics).
OUTAGE_LOG_INTERVAL_S = 10.0
_reported: dict[str, tuple[float, int]] = {}


def _log_outage(level: int, kind: str, message: str, *args: object) -> None:
    """Log a failure that repeats for every request during an outage once per interval, with the count left out.

    The first line left out in an interval schedules one more at its end, with the count, so the last interval of
    an outage is reported too. Call it on the event loop.
    """
    now = time.monotonic()
    last, left_out = _reported.get(kind, (-math.inf, 0))
    if now - last < OUTAGE_LOG_INTERVAL_S:
        if not left_out:
            end = last + OUTAGE_LOG_INTERVAL_S - now
            asyncio.get_running_loop().call_later(end, _log_left_out, level, kind, message, args)
        _reported[kind] = (last, left_out + 1)
        return
    _reported[kind] = (now, 0)
    log.log(level, message, *args)


def _log_left_out(level: int, kind: str, message: str, args: tuple[object, ...]) -> None:
    """At the end of an interval: log how many lines of ``kind`` were left out in it (like the first of them)."""
    last, left_out = _reported.get(kind, (-math.inf, 0))
    if left_out:
        now = time.monotonic()
        _reported[kind] = (now, 0)
        log.log(level, message + f" ({left_out} more like it in the last {now - last:.0f} s)", *args)


class ClientGone(ScoutError):
    """The client cancelled or its deadline passed before its decision could be delivered; nothing is logged."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def _gone(context: grpc.aio.ServicerContext) -> bool:
    """True when the response could no longer reach the client in time."""
    if context.cancelled() or context.done():
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining < DEADLINE_MARGIN_S


def _status(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Turn typed errors into their status code; Redis outages into UNAVAILABLE; anything else into INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except ScoutError as exc:
            await context.abort(exc.code, str(exc))
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            _log_outage(logging.WARNING, "unavailable", "%s: redis unavailable: %s", handler.__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "state store unavailable; retry")
        except redis.ResponseError as exc:
            if not isinstance(exc, redis.exceptions.OutOfMemoryError) and "OOM" not in str(exc):
                log.exception("%s failed", handler.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            _log_outage(
                logging.ERROR,
                "full",
                "%s: redis is at its memory cap (maxmemory, noeviction): %s",
                handler.__name__,
                exc,
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, "state store is full; retry later")
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class RecommenderService(scout_pb2_grpc.RecommenderServicer):
    """The ``scout.v1.Recommender`` service."""

    def __init__(
        self,
        recommender: Recommender,
        store: Store,
        join: JoinSettings,
        workers: int = 2,
        metrics: Metrics | None = None,
        max_in_flight: int = 64,
    ) -> None:
        self.recommender, self.store, self.join, self.metrics = recommender, store, join, metrics
        #: Recommend calls admitted and not yet answered; one past ``max_in_flight`` is refused (RESOURCE_EXHAUSTED).
        self.in_flight, self.max_in_flight = 0, max_in_flight
        #: What this process served and recorded since it started (the Admin service reports them).
        self.counters: collections.Counter[str] = collections.Counter()
        # Ranking runs here, off the event loop; few threads, so the loop keeps its turn at the GIL.
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="scout-decide")
        # Decisions made while one is being stored go to Redis together (see server.writer).
        self.writer = DecisionWriter(store, join.decision_stream_maxlen, join.pending_ttl_s)

    @_status
    async def Recommend(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.RecommendResponse:
        """Refuse past ``max_in_flight``; otherwise decide, log and answer (see :meth:`_recommend`)."""
        if self.in_flight >= self.max_in_flight:
            _log_outage(
                logging.WARNING, "overloaded", "Recommend: %d calls in flight; refusing more", self.max_in_flight
            )
            raise Overloaded(
                f"{OVERLOADED} {self.max_in_flight} Recommend calls in flight in this process (server.max_in_flight); "
                "retry after a backoff"
            )
        self.in_flight += 1
        try:
            return await self._recommend(request, context)
        finally:
            self.in_flight -= 1

    async def _recommend(
        self, request: scout_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.RecommendResponse:
        """Assign, retrieve, rank (on a worker thread), log the decision unless the client is gone, answer.

        A call whose deadline passes while it waits for a decide thread is cancelled by gRPC, and its queued
        decision with it (the executor's future is cancelled before it runs).
        """
        decision = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            self.recommender.decide,
            RecommendInput(
                unit_id=request.unit_id,
                surface=request.surface,
                num_items=request.num_items,
                context=dict(request.context),
                seed_item_ids=tuple(request.seed_item_ids),
                exclude_item_ids=tuple(request.exclude_item_ids),
            ),
        )
        record = decision.record
        if _gone(context):
            raise ClientGone("the deadline passed (or the call was cancelled) before the decision was made; not logged")
        await self.writer.write(record, record["decided_at"] + int(decision.reward_window_s * 1000))
        if _gone(context) and await self.store.unrecord_decision(record["event_id"]):
            raise ClientGone("the deadline passed (or the call was cancelled) while logging; decision withdrawn")
        self.counters["decisions"] += 1
        self.counters[f"decisions/{record['experiment']}/{record['variant']}"] += 1
        if self.metrics is not None:
            self.metrics.served(record["experiment"], record["variant"], record["emerging"])
        items = [
            scout_pb2.RecommendedItem(
                item_id=item, creator_id=creator, position=k, score=score, propensity=p, emerging=emerging
            )
            for k, (item, creator, score, p, emerging) in enumerate(
                zip(
                    record["item_ids"],
                    record["creator_ids"],
                    decision.scores,
                    record["propensities"],
                    record["emerging"],
                    strict=True,
                )
            )
        ]
        return scout_pb2.RecommendResponse(
            event_id=record["event_id"],
            experiment=record["experiment"],
            variant=record["variant"],
            policy=record["policy"],
            policy_version=record["policy_version"],
            items=items,
            slate_probability=record["slate_probability"],
            index_version=record["index_version"],
        )

    @_status
    async def Reward(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.RewardRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.RewardResponse:
        """Validate and record a reward for one served item; duplicates are acknowledged and ignored."""
        return await self._reward(request)

    @_status
    async def RewardStream(  # noqa: N802 - gRPC method name
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> scout_pb2.RewardStreamResponse:
        """Record each streamed reward as :meth:`Reward` would; each message gets its own outcome."""
        response = scout_pb2.RewardStreamResponse()
        index = 0
        async for request in requests:
            if index >= MAX_STREAM_REWARDS:
                raise InvalidArgument(
                    f"RewardStream carries at most {MAX_STREAM_REWARDS} messages; the first {MAX_STREAM_REWARDS} "
                    "were recorded (rewards are idempotent: resend the rest in another call)"
                )
            outcome = response.outcomes.add(index=index)
            try:
                if isinstance(request, Undecodable):
                    raise InvalidArgument(f"message is not a valid {request.message_type}: {request.error[:200]}")
                outcome.result.CopyFrom(await self._reward(request))
                response.accepted += 1
            except Exception as exc:
                code, message = _outcome(exc)
                outcome.code, outcome.message = code.value[0], message
                response.rejected += 1
            index += 1
        return response

    @_status
    async def Expose(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.ExposeRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.ExposeResponse:
        """Record that a decision's slate was shown (idempotent); see the README's "Exposure"."""
        check_string("event_id", request.event_id, MAX_EVENT_ID_CHARS)
        outcome = await self.store.record_exposure(request.event_id)
        if outcome == UNKNOWN:
            raise NotFound(f"event_id {echo(request.event_id)} is not a known decision")
        if outcome == CLOSED:
            raise FailedPrecondition(f"event_id {echo(request.event_id)}: the reward window has closed")
        self.counters["exposures"] += 1
        return scout_pb2.ExposeResponse(accepted=True, duplicate=outcome == DUPLICATE)

    async def _reward(self, request: scout_pb2.RewardRequest) -> scout_pb2.RewardResponse:
        check_reward(
            self.recommender.settings.limits, request.event_id, request.item_id, request.value, request.reward_id
        )
        outcome = await self.store.record_reward(
            request.event_id, request.item_id, request.value, self.join.late_stream_maxlen, request.reward_id
        )
        if outcome == UNKNOWN:
            raise NotFound(f"event_id {echo(request.event_id)} is not a known decision")
        if outcome == CLOSED:  # a decision joined before late rewards were kept (its closed marker holds no items)
            raise FailedPrecondition(f"event_id {echo(request.event_id)}: the reward window has closed")
        if outcome == NOT_IN_SLATE:
            raise InvalidArgument(f"item_id {echo(request.item_id)} was not served in event {echo(request.event_id)}")
        late = outcome in (LATE, LATE_DUPLICATE)
        duplicate = outcome in (DUPLICATE, LATE_DUPLICATE)
        outcome_name = "late" if late else "duplicate" if duplicate else "accepted"
        self.counters[f"rewards/{outcome_name}"] += 1
        if self.metrics is not None:
            self.metrics.rewards.labels(outcome_name).inc()
        return scout_pb2.RewardResponse(accepted=True, duplicate=duplicate, late=late)


def _outcome(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message :func:`_status` would answer for ``exc``."""
    if isinstance(exc, ScoutError):
        return exc.code, str(exc)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return grpc.StatusCode.UNAVAILABLE, "state store unavailable; retry"
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc):
        return grpc.StatusCode.UNAVAILABLE, "state store is full; retry later"
    log.error("RewardStream message failed", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"
