"""Shared fixtures: a real redis-server, a small synthetic world with its index, a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from embeddings.builder import build_artifact
from embeddings.encoder import EncoderConfig
from embeddings.index import IndexArtifact
from offline_eval.world import SyntheticWorld, WorldConfig
from server.app import ScoutServer, start_server
from server.redis_server import RedisProcess
from server.settings import Settings, load_settings

T = TypeVar("T")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    yield process.url
    process.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    return redis_url


@pytest.fixture(scope="session")
def world() -> SyntheticWorld:
    return SyntheticWorld(WorldConfig(num_items=3000, num_creators=150, num_users=300, seed=1))


@pytest.fixture(scope="session")
def index_dir(world: SyntheticWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("index")
    build_artifact(world.catalog, EncoderConfig(dim=16, seed=1)).save(directory)
    return directory


@pytest.fixture(scope="session")
def index(index_dir: Path) -> IndexArtifact:
    return IndexArtifact.load(index_dir)


def make_settings(index_dir: Path, redis_url: str, log_dir: Path, **join: Any) -> Settings:
    settings = load_settings(environ={})
    return replace(
        settings,
        redis_url=redis_url,
        index=index_dir,
        server=replace(settings.server, port=0, max_num_items=10, refresh_interval_s=0.1),
        join=replace(settings.join, **({"reward_window_s": 0.5, "poll_interval_s": 0.05} | join)),
        learner=replace(settings.learner, poll_interval_s=0.05),
        export=replace(settings.export, log_dir=log_dir, flush_interval_s=0.2),
    )


@dataclass
class Running:
    """A Scout server running on its own event loop in a background thread."""

    server: ScoutServer
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.run(self.server.stop(grace_s=1.0))


def run_server(settings: Settings, background: bool = True) -> tuple[Running, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_server(settings, background), loop).result(timeout=60)
    return Running(server, loop), thread


def stop_server(running: Running, thread: threading.Thread) -> None:
    """Stop a server from :func:`run_server` (unless it stopped itself), then its loop and thread."""
    if not running.server.stop_event.is_set():
        running.stop()
    running.loop.call_soon_threadsafe(running.loop.stop)
    thread.join(timeout=10)


@pytest.fixture
def scout(index_dir: Path, clean_redis: str, tmp_path: Path) -> Iterator[Running]:
    running, thread = run_server(make_settings(index_dir, clean_redis, tmp_path / "logs"))
    yield running
    stop_server(running, thread)
