"""Exposure logging and per-experiment reward windows and defaults, through a real server, Redis and exporter."""

import time
from dataclasses import replace

import grpc
import pytest
from conftest import make_settings, run_server

from offline_eval.logs import read_logs
from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = pytest.mark.redis


def test_only_exposed_decisions_train_and_every_decision_is_exported(index_dir, clean_redis, tmp_path) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs", reward_window_s=30.0)  # the global window
    experiment = replace(
        settings.experiments[0], require_exposure=True, reward_window_s=0.4, default_reward=-0.5
    )  # this experiment's own window and default
    running, thread = run_server(replace(settings, experiments=(experiment,)))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            replies = [
                stub.Recommend(scout_pb2.RecommendRequest(unit_id=f"u{k}", surface="home", num_items=3))
                for k in range(10)
            ]
            exposed = {r.event_id for r in replies[:5]}
            for reply in replies[:5]:
                answer = stub.Expose(scout_pb2.ExposeRequest(event_id=reply.event_id))
                assert answer.accepted and not answer.duplicate
            assert stub.Expose(scout_pb2.ExposeRequest(event_id=replies[0].event_id)).duplicate
            stub.Reward(
                scout_pb2.RewardRequest(event_id=replies[0].event_id, item_id=replies[0].items[1].item_id, value=1.0)
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.Expose(scout_pb2.ExposeRequest(event_id="no-such-event"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                stub.Expose(scout_pb2.ExposeRequest(event_id=""))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event_id" in info.value.details()
            deadline = time.monotonic() + 30
            client, learner = running.server.store.client, running.server.store.learner
            while time.monotonic() < deadline:
                counts = running.run(client.hgetall(learner))
                if int(counts.get(b"applied", 0)) + int(counts.get(b"skipped", 0)) >= 10:
                    break
                time.sleep(0.1)
            assert int(counts[b"applied"]) == 5 and int(counts[b"skipped"]) == 5  # the unexposed half never trains
            with pytest.raises(grpc.RpcError) as info:  # the window (0.4 s, not the global 30 s) has closed
                stub.Expose(scout_pb2.ExposeRequest(event_id=replies[9].event_id))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (tmp_path / "logs").exists() and any((tmp_path / "logs").rglob("*.parquet")):
                logs = read_logs(tmp_path / "logs")
                if len(logs) == 10:
                    break
            time.sleep(0.1)
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
    assert len(logs) == 10 and set(logs["require_exposure"]) == {True}
    assert {e for e, x in zip(logs["event_id"], logs["exposed"], strict=True) if x} == exposed
    assert set(logs["default_reward"]) == {-0.5}
    rows = dict(zip(logs["event_id"], logs["rewards"], strict=True))
    assert rows[replies[0].event_id] == [-0.5, 1.0, -0.5] and rows[replies[3].event_id] == [-0.5] * 3
