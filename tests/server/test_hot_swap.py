"""Index hot swap on a real server: publishing a new version under the versions root swaps it in under concurrent
Recommend load with no failed request, later decisions carry the new version, and the learner (in the same
server) applies the decisions of both versions, each rebuilt against its own."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from conftest import make_settings, run_server

from embeddings.builder import build_artifact
from embeddings.encoder import EncoderConfig
from embeddings.index import IndexArtifact
from offline_eval.world import SyntheticWorld
from server.indexes import IndexVersions
from server.pb import scout_pb2, scout_pb2_grpc
from server.recommender import PolicyBook, Recommender
from server.reloader import IndexReloader


@pytest.mark.redis
@pytest.mark.slow
def test_a_published_version_is_swapped_in_under_load_without_a_failed_request(
    world: SyntheticWorld, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    root = tmp_path / "versions"
    root.mkdir()
    index.publish(root)
    new = build_artifact(world.catalog, EncoderConfig(dim=16, seed=2))
    settings = make_settings(root, clean_redis, tmp_path / "logs")
    settings = replace(settings, server=replace(settings.server, index_watch_interval_s=0.05))
    running, thread = run_server(settings)
    failures: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                request = scout_pb2.RecommendRequest(
                    unit_id=f"c{k}-{n}", surface="home", num_items=3, context={"mobile": 1.0}
                )
                try:
                    seen.append(stub.Recommend(request, timeout=10).index_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        new.publish(root)  # the server's watch swaps it in while the clients keep calling
        while running.server.service.recommender.index.version != new.version and time.monotonic() < deadline + 20:
            time.sleep(0.02)
        swapped_at = len(seen)
        while len(seen) < swapped_at + 40 and time.monotonic() < deadline + 40:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(timeout=20)
        with grpc.insecure_channel(running.target) as channel:
            after = [
                scout_pb2_grpc.RecommenderStub(channel)
                .Recommend(scout_pb2.RecommendRequest(unit_id=f"after{k}", surface="home", num_items=3))
                .index_version
                for k in range(10)
            ]
        # Every decision is joined, then learned: the learner must rebuild each against the version it names.
        client_ = redis.Redis.from_url(clean_redis)
        total = len(seen) + len(after)
        wait = time.monotonic() + 30
        while time.monotonic() < wait:
            applied = int(client_.hget("{scout}:learner", "applied") or 0)
            skipped = int(client_.hget("{scout}:learner", "skipped") or 0)
            if applied + skipped >= total:
                break
            time.sleep(0.1)
        client_.close()
    finally:
        stop.set()
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
    assert failures == [], failures[:5]
    assert running.server.service.recommender.index.version == new.version
    assert set(seen) == {index.version, new.version}, "the load spans the swap"
    assert after == [new.version] * 10
    assert seen[-1] == new.version
    assert (applied, skipped) == (total, 0), "the learner applies the decisions of both versions"


def test_a_version_of_another_dimension_is_refused_and_the_old_one_keeps_serving(
    world: SyntheticWorld, index: IndexArtifact, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "versions"
    root.mkdir()
    index.publish(root)
    settings = make_settings(root, "redis://unused", tmp_path / "logs")

    class Service:
        recommender = Recommender(settings, index, PolicyBook(settings, index.dim))

    service = Service()
    versions = IndexVersions(index, root)
    reloader = IndexReloader(root, service, versions, settings)
    assert not asyncio.run(reloader.reload())  # CURRENT names the served version
    build_artifact(world.catalog, EncoderConfig(dim=8, seed=3)).publish(root)
    with caplog.at_level(logging.ERROR, logger="server.reloader"):
        assert not asyncio.run(reloader.reload())
        assert not asyncio.run(reloader.reload())  # refused once, not retried
    assert service.recommender.index is index and versions.current is index
    assert len([r for r in caplog.records if "embedding dimension 8" in r.getMessage()]) == 1
    other = build_artifact(world.catalog, EncoderConfig(dim=16, seed=4))
    other.publish(root)
    assert asyncio.run(reloader.reload())
    assert service.recommender.index.version == other.version == versions.current.version
    assert versions.get(index.version) is index  # the previous version stays cached for the learner
