"""Prometheus metrics: RPC counts and latencies by method and status, decisions, exposure, versions and lags.

Each server process keeps its own registry and serves it at ``http://metrics_host:metrics_port/metrics``; the
README's "Metrics" section lists every series. Under ``scout serve --workers N`` the parent serves that port
instead, with every serving process's series labelled by ``worker`` (:class:`WorkerMetrics`). RPCs are measured
by :class:`RpcMetrics`, a server interceptor, so every service and status code (UNAUTHENTICATED included) is
counted without touching the handlers.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from server.logs import MAX_REQUEST_ID_CHARS, REQUEST_ID_KEY, request_id

#: Trailing metadata naming the serving process under ``scout serve --workers N``.
WORKER_KEY = "x-scout-worker"
#: Latency buckets (seconds): fine below 10 ms, where Recommend should live.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The process's metric families, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scout_rpc_requests", "RPCs handled, by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "scout_rpc_latency_seconds",
            "Server-side RPC latency, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slots = Counter(
            "scout_served_slots",
            "Slots served, by experiment, variant and whether the item's creator is emerging",
            ["experiment", "variant", "emerging"],
            registry=r,
        )
        self.emerging_share = Gauge(
            "scout_emerging_exposure_share",
            "Share of slots served to emerging creators since this process started, by experiment",
            ["experiment"],
            registry=r,
        )
        self.in_flight = Gauge("scout_recommend_in_flight", "Recommend calls admitted and not yet answered", registry=r)
        self.rewards = Counter(
            "scout_rewards", "Rewards received, by outcome (accepted, duplicate, late)", ["outcome"], registry=r
        )
        self.fallbacks = Gauge(
            "scout_policy_fallbacks", "Slates served uniformly because a policy's numbers were not finite", registry=r
        )
        self.policy_version = Gauge(
            "scout_policy_version",
            "Version of the policy snapshot each variant serves",
            ["experiment", "variant", "policy"],
            registry=r,
        )
        self.index = Info("scout_index", "The index version being served", registry=r)
        self.config = Info("scout_config", "The experiments configuration version in force", registry=r)
        self.pending = Gauge("scout_pending_decisions", "Decisions waiting for their reward window", registry=r)
        self.redis_up = Gauge(
            "scout_redis_up", "Whether Redis took the health check's write under every shard", registry=r
        )
        self.join_lag = Gauge(
            "scout_join_lag_seconds", "How far the oldest pending decision is past its due time", registry=r
        )
        self.export_lag = Gauge(
            "scout_export_lag_seconds",
            "How long the oldest joined decision not yet in a Parquet file has waited",
            registry=r,
        )
        self.learner_lag = Gauge(
            "scout_learner_lag_seconds",
            "How much older the learner's position is than the newest joined decision",
            registry=r,
        )
        self._served: dict[str, list[int]] = {}
        self._http: Any = None

    def served(self, experiment: str, variant: str, emerging: list[bool]) -> None:
        """Count one served slate's slots."""
        flagged = sum(emerging)
        if flagged:
            self.slots.labels(experiment, variant, "true").inc(flagged)
        if len(emerging) > flagged:
            self.slots.labels(experiment, variant, "false").inc(len(emerging) - flagged)
        totals = self._served.setdefault(experiment, [0, 0])
        totals[0] += flagged
        totals[1] += len(emerging)
        self.emerging_share.labels(experiment).set(totals[0] / totals[1] if totals[1] else 0.0)

    def serve_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on a daemon thread; returns the bound port (``port=0`` picks one)."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class WorkerMetrics:
    """A collector that scrapes the serving processes of ``scout serve --workers N`` at each scrape.

    Every sample gets a ``worker`` label (the process's index, as in ``x-scout-worker``), so
    ``sum without (worker) (...)`` gives the totals; ``scout_worker_up`` says which processes answered.

    Parameters
    ----------
    ports
        Metrics port of each serving process, by worker index.
    host
        Where they listen.
    timeout_s
        How long one process may take to answer.
    """

    def __init__(self, ports: dict[str, int], host: str = "127.0.0.1", timeout_s: float = 2.0) -> None:
        self.ports, self.host, self.timeout_s = ports, host, timeout_s

    def collect(self) -> Iterator[Metric]:
        """Every process's families merged, each sample labelled by its worker."""
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily("scout_worker_up", "Whether a serving process answered this scrape", labels=["worker"])
        for worker, port in self.ports.items():
            try:
                url = f"http://{self.host}:{port}/metrics"
                with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                    text = reply.read().decode()
            except OSError:
                up.add_metric([worker], 0.0)
                continue
            up.add_metric([worker], 1.0)
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value, sample.timestamp)
        yield from families.values()
        yield up


def serve_worker_metrics(ports: dict[str, int], host: str, port: int) -> Any:
    """Serve the serving processes' metrics (see :class:`WorkerMetrics`) on ``host:port``; returns the server."""
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(ports, "127.0.0.1" if host in ("0.0.0.0", "::", "") else host))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def _method_name(full: str) -> str:
    """``/scout.v1.Recommender/Recommend`` -> ``scout.v1.Recommender/Recommend``."""
    return full.lstrip("/") or "unknown"


#: A call cancelled with less than this left of its deadline counts as DEADLINE_EXCEEDED: the server's deadline
#: runs later than the client's by the request's transit, so the client's own timer often cancels the call first.
DEADLINE_SLACK_S = 0.05
#: Generated request ids need to be unique, not unguessable: drawn without a syscall on the event loop per call
#: (``uuid.uuid4`` reads os.urandom, which lets go of the GIL: getting it back from a decide thread can take a
#: switch interval, 5 ms).
_request_ids = random.Random(int.from_bytes(os.urandom(16), "big"))


def _start(context: Any, worker: str | None) -> tuple[float, contextvars.Token[str]]:
    """Set this RPC's request id (the caller's ``x-request-id`` or a new one); echo it (and the worker index)."""
    rid = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            rid = (value if isinstance(value, str) else value.decode("latin-1"))[:MAX_REQUEST_ID_CHARS]
            break
    rid = rid or f"{_request_ids.getrandbits(64):016x}"
    trailing = ((REQUEST_ID_KEY, rid),) if worker is None else ((REQUEST_ID_KEY, rid), (WORKER_KEY, worker))
    context.set_trailing_metadata(trailing)
    return time.perf_counter(), request_id.set(rid)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Count every RPC and time it, labelled by method and final status code; give each RPC its request id."""

    def __init__(self, metrics: Metrics, worker: str | None = None) -> None:
        self.metrics, self.worker = metrics, worker

    def _observe(self, method: str, context: Any, started: float, outcome: str) -> None:
        """Count and time one RPC; ``outcome`` is ``returned``, ``raised`` or ``cancelled`` (by gRPC)."""
        code = context.code()
        if code is None and outcome == "cancelled":  # the deadline passed or the client cancelled; no code is set
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        elif code is None:
            code = grpc.StatusCode.OK if outcome == "returned" else grpc.StatusCode.UNKNOWN
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.requests.labels(method, name).inc()
        self.metrics.latency.labels(method, name).observe(time.perf_counter() - started)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap unary-response handlers (every Scout RPC) with a timer; pass streaming responses through."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.response_streaming:
            return handler
        method = _method_name(handler_call_details.method or "")
        if handler.request_streaming:
            inner: Any = handler.stream_unary

            async def timed_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                (started, token), outcome = _start(context, self.worker), "raised"
                try:
                    response = await inner(requests, context)
                    outcome = "returned"
                    return response
                except asyncio.CancelledError:
                    outcome = "cancelled"
                    raise
                finally:
                    self._observe(method, context, started, outcome)
                    request_id.reset(token)

            return grpc.stream_unary_rpc_method_handler(
                timed_stream, handler.request_deserializer, handler.response_serializer
            )
        unary: Any = handler.unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            (started, token), outcome = _start(context, self.worker), "raised"
            try:
                response = await unary(request, context)
                outcome = "returned"
                return response
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                self._observe(method, context, started, outcome)
                request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(timed, handler.request_deserializer, handler.response_serializer)
