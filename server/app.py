"""Assemble and run a Scout server: Redis, index, policies, gRPC (with health and reflection), background loops."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from embeddings.index import IndexArtifact
from server.admin import AdminService
from server.config_reloader import ConfigReloader
from server.indexes import IndexVersions, versions_root
from server.learner import Learner, Refresher, refresh_policies
from server.loops import Loop, freeze_heap, process_identity, sleep_until
from server.metrics import Metrics, RpcMetrics
from server.pb import scout_pb2
from server.recommender import PolicyBook, Recommender
from server.redis_server import RedisProcess
from server.reflection import enable_reflection
from server.reloader import IndexReloader
from server.security import TokenAuth, load_tokens, server_credentials
from server.service import RecommenderService
from server.settings import Settings
from server.store import Store, settings_store
from server.supervisor import WORKER_INDEX_ENV
from server.validation import add_recommender_to_server
from server.worker import Background, start_background

log = logging.getLogger(__name__)
SERVICE_NAME = scout_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
ADMIN_NAME = scout_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


@dataclass
class ScoutServer:
    """A running server; create it with :func:`start_server`, stop it with :meth:`stop`.

    ``background`` runs the joiner, learner and exporter in this process too (the embedded default).
    """

    settings: Settings
    port: int
    grpc_server: grpc.aio.Server
    store: Store
    redis_process: RedisProcess | None
    identity: str
    service: RecommenderService
    background: Background = field(default_factory=Background)
    loops: list[Loop] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    serving: bool = True
    health_task: asyncio.Task[None] | None = None
    reloader: IndexReloader | None = None
    refresher: Refresher | None = None
    config: ConfigReloader | None = None
    metrics: Metrics = field(default_factory=Metrics)
    metrics_port: int | None = None

    @property
    def exported(self) -> int:
        """Decisions the exporters of this process have exported."""
        return self.background.exported

    @property
    def learner(self) -> Learner | None:
        """The learner running in this process, if any."""
        return self.background.learner

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain in-flight requests, stop the loops (the exporters flush), close Redis."""
        await self.grpc_server.stop(grace_s)
        self.stop_event.set()
        if self.health_task is not None:
            await asyncio.gather(self.health_task, return_exceptions=True)
        await asyncio.gather(*(loop.task for loop in self.loops if loop.task is not None), return_exceptions=True)
        await self.background.wait()
        self.service.executor.shutdown(wait=False)
        await self.service.writer.close()
        self.metrics.close()
        await self.store.client.aclose()
        if self.redis_process is not None:
            self.redis_process.stop()
        log.info("server on port %d stopped", self.port)


async def _watch_health(server: ScoutServer, servicer: health.aio.HealthServicer) -> None:  # type: ignore[name-defined]
    """Keep the health status true: NOT_SERVING while Redis takes no write or a background loop is down."""
    interval = server.settings.server.health_interval_s
    while not server.stop_event.is_set():
        problems = [loop.name for loop in server.loops + server.background.loops if not loop.healthy]
        try:
            await asyncio.wait_for(server.store.probe(), timeout=max(interval, 1.0))
            server.metrics.redis_up.set(1)
        except Exception as exc:
            problems.append(f"redis ({type(exc).__name__})")
            server.metrics.redis_up.set(0)
        serving = not problems
        if serving != server.serving:
            server.serving = serving
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await servicer.set(name, status)
            if serving:
                log.warning("health: SERVING again")
            else:
                log.warning("health: NOT_SERVING (%s)", ", ".join(problems))
        await sleep_until(server.stop_event, interval)


async def _apply_settings(server: ScoutServer, settings: Settings) -> None:
    """Serve reloaded experiments: a new recommender over the same index, keeping unchanged variants' policies."""
    old = server.service.recommender
    policies = PolicyBook(settings, old.index.dim)
    policies.carry_over(old.policies)
    new = await asyncio.to_thread(Recommender, settings, old.index, policies)
    new._ids = old._ids  # one event-id sequence (seeded only in demos and tests)
    server.service.recommender = new  # one assignment: requests in flight finish under the old configuration
    server.settings = settings
    if server.refresher is not None:
        server.refresher.policies = policies
    if server.reloader is not None:
        server.reloader.settings = settings
    learner = server.background.learner
    if learner is not None:
        dim = old.index.dim
        learner.reconfigure(lambda: PolicyBook(settings, dim))


async def _update_gauges(server: ScoutServer) -> float:
    """Refresh the gauges that are read from the serving policies and from Redis; returns the seconds to wait.

    The gauges read from Redis are NaN while reading them fails: a backlog's last value would read as current.
    """
    metrics, recommender = server.metrics, server.service.recommender
    metrics.fallbacks.set(recommender.fallbacks)
    metrics.index.info({"version": recommender.index.version})
    metrics.config.info({"version": recommender.config_version})
    for (experiment, variant), policy in recommender.policies.items():
        metrics.policy_version.labels(experiment, variant, policy.name).set(float(policy.version))
    read_from_redis = (metrics.pending, metrics.join_lag, metrics.learner_lag, metrics.export_lag)
    try:
        values = (*await server.store.lags(), await server.store.export_lag())
    except Exception:
        for gauge in read_from_redis:  # unknown, rather than the last value seen
            gauge.set(math.nan)
        raise
    for gauge, value in zip(read_from_redis, values, strict=True):
        gauge.set(value)
    return server.settings.server.health_interval_s


def limit_native_threads(threads: int = 1) -> None:
    """Cap this process's BLAS and OpenMP (FAISS) thread pools at ``threads``.

    A request's matrices are small (one query, a few hundred candidates), so a pool of threads per library only
    spins and wakes: on 2 busy cores, LinUCB scoring of 200 candidates took 7 ms with the default pools and
    0.3 ms with one thread, and the spinning threads took the cores from the decide threads and the event loop.
    Parallelism comes from the decide threads (``server.decide_threads``) and from ``--workers`` instead.
    ``scout worker`` caps its pools too: its learner's default pool of 2 OpenBLAS threads took 0.17 cores at
    c16 (more than the learner thread itself) from the serving process on the same 2 cores.
    """
    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(threads)
    faiss.omp_set_num_threads(threads)
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    log.info("native thread pools (BLAS, OpenMP): %s; FAISS %d", pools, faiss.omp_get_max_threads())


async def start_server(
    settings: Settings, background: bool = True, config: tuple[Path, Callable[[], Settings]] | None = None
) -> ScoutServer:
    """Start serving on ``settings.server.host:port`` (port 0 picks a free port) and return the running server.

    ``config`` is the ``--config`` file and a function that reads the settings as at start: the server watches the
    file and reloads its experiments (see :mod:`server.config_reloader`).
    """
    index = IndexArtifact.load(settings.index)
    redis_process = None
    url = settings.redis_url
    if not url:
        redis_process = RedisProcess(
            settings.data_dir, appendfsync=settings.redis_appendfsync, maxmemory=settings.redis_maxmemory
        )
        url = redis_process.url
    store = settings_store(settings, url)
    metrics = Metrics()
    try:
        credentials = server_credentials(settings.security)  # bad files fail here, before anything listens
        worker = os.environ.get(WORKER_INDEX_ENV)  # set by `scout serve --workers N` for each serving process
        interceptors: list[grpc.aio.ServerInterceptor] = [RpcMetrics(metrics, worker)]  # outermost: counts refusals
        if settings.security.tokens_file is not None:
            interceptors.append(TokenAuth(load_tokens(settings.security.tokens_file)))
        await store.client.ping()
        await store.positions()  # a learner position of another shard count fails here, saying so
        policies = PolicyBook(settings, index.dim)
        await refresh_policies(store, policies)
        server = grpc.aio.server(
            interceptors=interceptors, options=[("grpc.so_reuseport", 1 if settings.server.reuse_port else 0)]
        )
        service = RecommenderService(
            Recommender(settings, index, policies),
            store,
            settings.join,
            settings.server.decide_threads,
            metrics,
            settings.server.max_in_flight,
        )
        metrics.in_flight.set_function(lambda: service.in_flight)
        add_recommender_to_server(service, server)  # undecodable requests get INVALID_ARGUMENT, not UNKNOWN
        admin = AdminService()
        add_recommender_to_server(admin, server, "Admin")
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((SERVICE_NAME, ADMIN_NAME, health.SERVICE_NAME), server)
        address = f"{settings.server.host}:{settings.server.port}"
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        if port == 0:
            raise RuntimeError(f"cannot listen on {settings.server.host}:{settings.server.port}")
    except BaseException:
        await store.client.aclose()
        if redis_process is not None:
            redis_process.stop()
        raise
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    identity = process_identity()
    running = ScoutServer(settings, port, server, store, redis_process, identity, service, metrics=metrics)
    admin.server = running
    stop = running.stop_event
    if settings.server.metrics_port is not None:
        running.metrics_port = metrics.serve_http(settings.server.metrics_host, settings.server.metrics_port)
        running.loops.append(Loop("metrics", functools.partial(_update_gauges, running), stop))
    refresher = Refresher(store, policies, settings.server.refresh_interval_s)
    running.refresher = refresher
    running.loops.append(Loop("refresher", refresher.step, stop))
    if config is not None:
        running.config = ConfigReloader(config[0], config[1], settings, functools.partial(_apply_settings, running))
        running.loops.append(Loop("config-watch", running.config.step, stop))
    for loop in running.loops:
        loop.start()
    versions = IndexVersions(index, versions_root(settings.index))
    if versions.root is not None:
        reloader = IndexReloader(versions.root, service, versions, settings)
        running.reloader = reloader
        running.loops.append(Loop("index-reloader", reloader.step, stop))
        running.loops[-1].start()
    if background:
        running.background = start_background(store, settings, versions, stop, identity=identity)
        metrics.registry.register(running.background)
    running.health_task = asyncio.create_task(_watch_health(running, health_servicer))
    freeze_heap()  # the index and everything loaded so far lives as long as the server
    log.info("scout listening on %s:%d (index %s, redis %s)", settings.server.host, port, index.version, url)
    return running
