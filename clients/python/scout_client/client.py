"""A small synchronous client for Scout: deadlines, retries on UNAVAILABLE, tokens, TLS, reward batching."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from scout_client import scout_pb2, scout_pb2_grpc

T = TypeVar("T")
#: Most rewards one RewardStream call may carry (the server's limit).
MAX_STREAM_REWARDS = 10_000
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
#: How a server's overload refusal (RESOURCE_EXHAUSTED, nothing done) begins; a request over the size limit does not.
OVERLOADED = "overloaded:"


def retryable(exc: grpc.RpcError) -> bool:
    """UNAVAILABLE, or RESOURCE_EXHAUSTED from a server refusing calls past ``server.max_in_flight``."""
    code = exc.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return (exc.details() or "").startswith(OVERLOADED)
    return bool(code == grpc.StatusCode.UNAVAILABLE)


class ScoutClient:
    """Calls a Scout server.

    Parameters
    ----------
    target
        ``host:port``.
    token
        Bearer token, sent as ``authorization`` metadata when the server wants one.
    root_certificates, private_key, certificate_chain
        PEM bytes: TLS (the CA that signed the server's certificate; None with ``tls=True`` uses the system roots)
        and, for mutual TLS, the client's key and certificate.
    tls
        Use TLS even without ``root_certificates``.
    timeout_s
        Deadline of each call, unless a call gives its own; retries come out of it (no attempt starts after it).
    retries
        Extra attempts after UNAVAILABLE (Redis or the server briefly down) or an overloaded server's
        RESOURCE_EXHAUSTED (a call refused past ``server.max_in_flight``, nothing decided), with jittered
        exponential backoff from ``backoff_s``. Rewards are idempotent per (event, item), so retrying them is
        always safe; a retried Recommend is a new decision (the first may have been logged without reaching you,
        see the README).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        tls: bool = False,
        timeout_s: float = 1.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries >= 0 and backoff_s >= 0")
        if tls or root_certificates is not None or certificate_chain is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(target, credentials, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.recommender = scout_pb2_grpc.RecommenderStub(self.channel)
        self.admin = scout_pb2_grpc.AdminStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s

    def __enter__(self) -> ScoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _retry(self, call: Callable[[float], T], timeout_s: float) -> T:
        """``call(seconds left)`` until it succeeds, fails for good, runs out of retries or of ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for attempt in range(self.retries + 1):
            try:
                return call(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                pause = self.backoff_s * 2**attempt * (0.5 + random.random())
                if not retryable(exc) or attempt == self.retries or time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def recommend(
        self,
        unit_id: str,
        surface: str,
        num_items: int,
        context: Mapping[str, float] | None = None,
        seed_item_ids: Sequence[str] = (),
        exclude_item_ids: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> scout_pb2.RecommendResponse:
        """A slate for ``unit_id`` on ``surface``; keep ``event_id`` to send rewards."""
        request = scout_pb2.RecommendRequest(
            unit_id=unit_id,
            surface=surface,
            num_items=num_items,
            context=dict(context or {}),
            seed_item_ids=list(seed_item_ids),
            exclude_item_ids=list(exclude_item_ids),
        )
        return self._retry(
            lambda left: self.recommender.Recommend(request, timeout=left, metadata=self.metadata),
            timeout_s or self.timeout_s,
        )

    def reward(self, event_id: str, item_id: str, value: float = 1.0, reward_id: str = "") -> scout_pb2.RewardResponse:
        """Record one reward; a repeat of a ``reward_id`` answers ``duplicate=True``.

        Send a ``reward_id`` when the experiment sums rewards, so a retry cannot add twice; with ``first`` (the
        default aggregation) a repeat for the same item is a duplicate anyway.
        """
        request = scout_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=value, reward_id=reward_id)
        return self._retry(
            lambda left: self.recommender.Reward(request, timeout=left, metadata=self.metadata), self.timeout_s
        )

    def reward_many(
        self, rewards: Iterable[tuple[str, str, float]], timeout_s: float | None = None
    ) -> list[scout_pb2.RewardOutcome]:
        """Send rewards over RewardStream (10,000 per call); one outcome per reward, in order.

        A call that fails with UNAVAILABLE is resent whole, and so is every message whose outcome is UNAVAILABLE:
        rewards are idempotent, so nothing is recorded twice. Other per-message errors are returned, not raised.
        """
        pending = [scout_pb2.RewardRequest(event_id=e, item_id=i, value=v) for e, i, v in rewards]
        outcomes: list[scout_pb2.RewardOutcome] = []
        timeout = timeout_s or max(self.timeout_s, 10.0)
        for start in range(0, len(pending), MAX_STREAM_REWARDS):
            chunk = pending[start : start + MAX_STREAM_REWARDS]
            results: dict[int, scout_pb2.RewardOutcome] = {}
            todo = list(range(len(chunk)))
            for attempt in range(self.retries + 1):
                batch = [chunk[k] for k in todo]
                response = self._retry(
                    lambda left, batch=batch: self.recommender.RewardStream(  # type: ignore[misc]
                        iter(batch), timeout=left, metadata=self.metadata
                    ),
                    timeout,
                )
                retry = []
                for outcome in response.outcomes:
                    k = todo[outcome.index]
                    outcome.index = start + k
                    results[k] = outcome
                    if outcome.code == _UNAVAILABLE:
                        retry.append(k)
                todo = retry
                if not todo:
                    break
                time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
            outcomes += [results[k] for k in range(len(chunk))]
        return outcomes


class RewardBatcher:
    """Collects rewards and sends them in batches over RewardStream, from a background thread.

    Parameters
    ----------
    client
        The client to send with.
    max_batch
        Send as soon as this many rewards wait.
    max_delay_s
        Send what waits at least this often.
    on_outcomes
        Called (on the sending thread) with each batch's outcomes; by default, errors other than OK are kept in
        :attr:`failures`.
    """

    def __init__(
        self,
        client: ScoutClient,
        max_batch: int = 1000,
        max_delay_s: float = 0.5,
        on_outcomes: Callable[[list[tuple[tuple[str, str, float], scout_pb2.RewardOutcome]]], None] | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_STREAM_REWARDS or max_delay_s <= 0:
            raise ValueError(f"max_batch must be in 1..{MAX_STREAM_REWARDS} and max_delay_s > 0")
        self.client, self.max_batch, self.max_delay_s = client, max_batch, max_delay_s
        self.on_outcomes = on_outcomes
        self.failures: list[tuple[tuple[str, str, float], scout_pb2.RewardOutcome]] = []
        self.sent = 0
        self._waiting: list[tuple[str, str, float]] = []
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="scout-reward-batcher", daemon=True)
        self._thread.start()

    def add(self, event_id: str, item_id: str, value: float = 1.0) -> None:
        """Queue one reward."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append((event_id, item_id, value))
            if len(self._waiting) >= self.max_batch:
                self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting and not self._closed:
                    self._lock.wait(self.max_delay_s)
                batch, self._waiting = self._waiting, []
                closed = self._closed
            if batch:
                outcomes = self.client.reward_many(batch)
                pairs = list(zip(batch, outcomes, strict=True))
                self.sent += len(batch)
                if self.on_outcomes is not None:
                    self.on_outcomes(pairs)
                else:
                    self.failures += [(r, o) for r, o in pairs if o.code != 0]
            if closed and not batch:
                return

    def close(self) -> None:
        """Send what waits and stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
