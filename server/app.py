"""Assemble and run a Scout server: Redis, index, policies, gRPC (with health and reflection), background loops."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embeddings.index import IndexArtifact
from server.exporter import Exporter
from server.joiner import run_joiner
from server.learner import Learner, refresh_policies, run_refresher
from server.pb import scout_pb2
from server.recommender import PolicyBook, Recommender
from server.redis_server import RedisProcess
from server.service import RecommenderService
from server.settings import Settings
from server.store import Store
from server.validation import add_recommender_to_server

log = logging.getLogger(__name__)
SERVICE_NAME = scout_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name


@dataclass
class ScoutServer:
    """A running server; create it with :func:`start_server`, stop it with :meth:`stop`.

    ``background`` runs the joiner, learner and exporter in this process too (the embedded default).
    """

    settings: Settings
    port: int
    grpc_server: grpc.aio.Server
    store: Store
    exporter: Exporter | None
    redis_process: RedisProcess | None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain in-flight requests, stop the loops (the exporter flushes), close Redis."""
        await self.grpc_server.stop(grace_s)
        self.stop_event.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("background loop failed: %r", result)
        await self.store.client.aclose()
        if self.redis_process is not None:
            self.redis_process.stop()
        log.info("server on port %d stopped", self.port)


async def start_server(settings: Settings, background: bool = True) -> ScoutServer:
    """Start serving on ``settings.server.host:port`` (port 0 picks a free port) and return the running server."""
    index = IndexArtifact.load(settings.index)
    redis_process = None
    url = settings.redis_url
    if not url:
        redis_process = RedisProcess(settings.data_dir)
        url = redis_process.url
    store = Store(aioredis.Redis.from_url(url), settings.key_prefix)
    try:
        await store.client.ping()
    except Exception:
        if redis_process is not None:
            redis_process.stop()
        raise
    policies = PolicyBook(settings, index.dim)
    await refresh_policies(store, policies)

    server = grpc.aio.server()
    add_recommender_to_server(RecommenderService(Recommender(settings, index, policies), store, settings.join), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.server.host}:{settings.server.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.server.host}:{settings.server.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    running = ScoutServer(settings, port, server, store, None, redis_process)
    stop = running.stop_event
    running.tasks.append(asyncio.create_task(run_refresher(store, policies, settings.server.refresh_interval_s, stop)))
    if background:
        running.exporter = Exporter(store, settings.export)
        learner = Learner(store, PolicyBook(settings, index.dim), index, settings.learner)
        running.tasks += [
            asyncio.create_task(run_joiner(store, settings.join, stop)),
            asyncio.create_task(learner.run(stop)),
            asyncio.create_task(running.exporter.run(stop)),
        ]
    log.info("scout listening on %s:%d (index %s, redis %s)", settings.server.host, port, index.version, url)
    return running
