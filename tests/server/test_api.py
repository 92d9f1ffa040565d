"""RewardStream, reflection v1/v1alpha, request ids and Prometheus metrics, over real gRPC and a real Redis."""

import io
import json
import logging
import re
import sys
import time
import urllib.request
from dataclasses import replace

import grpc
import pytest
from conftest import make_settings, run_server
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.logs import JsonFormatter, configure, request_id
from server.pb import scout_pb2, scout_pb2_grpc
from server.service import MAX_STREAM_REWARDS

pytestmark = pytest.mark.redis


def recommend(stub, unit: str = "user-000001") -> scout_pb2.RecommendResponse:
    return stub.Recommend(
        scout_pb2.RecommendRequest(
            unit_id=unit, surface="home", num_items=3, context={"mobile": 1.0}, seed_item_ids=["item-0000001"]
        )
    )


@pytest.fixture
def channel(scout):
    with grpc.insecure_channel(scout.target) as channel:
        yield channel


def test_reward_stream_gives_each_message_its_outcome(scout, channel) -> None:
    stub = scout_pb2_grpc.RecommenderStub(channel)
    reply = recommend(stub)
    first, second = reply.items[0].item_id, reply.items[1].item_id
    messages = [
        scout_pb2.RewardRequest(event_id=reply.event_id, item_id=first, value=1.0),
        scout_pb2.RewardRequest(event_id=reply.event_id, item_id=first, value=7.0),  # duplicate: first value wins
        scout_pb2.RewardRequest(event_id="no-such-event", item_id=first, value=1.0),
        scout_pb2.RewardRequest(event_id=reply.event_id, item_id="item-not-served", value=1.0),
        scout_pb2.RewardRequest(event_id=reply.event_id, item_id=second, value=float("nan")),
        scout_pb2.RewardRequest(event_id=reply.event_id, item_id=second, value=0.5),
    ]
    response = stub.RewardStream(iter(messages))
    assert [o.index for o in response.outcomes] == list(range(6))
    codes = [o.code for o in response.outcomes]
    ok, invalid, not_found = (grpc.StatusCode.OK.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0],
                              grpc.StatusCode.NOT_FOUND.value[0])  # fmt: skip
    assert codes == [ok, ok, not_found, invalid, invalid, ok]
    assert response.accepted == 3 and response.rejected == 3
    assert response.outcomes[0].result.accepted and not response.outcomes[0].result.duplicate
    assert response.outcomes[1].result.duplicate
    assert "event_id" in response.outcomes[2].message and "value" in response.outcomes[4].message
    # The accepted rewards are the ones the join sees: the first value of the duplicate pair, and the last message.
    pending = scout.run(scout.server.store.client.hgetall(scout.server.store.pending_key(reply.event_id)))
    assert pending[f"r:{first}".encode()] == b"1.0" and pending[f"r:{second}".encode()] == b"0.5"


def test_reward_stream_survives_undecodable_messages_and_caps_its_length(channel) -> None:
    raw = channel.stream_unary(
        "/scout.v1.Recommender/RewardStream",
        request_serializer=lambda b: b,
        response_deserializer=scout_pb2.RewardStreamResponse.FromString,
    )
    good = scout_pb2.RewardRequest(event_id="e", item_id="i", value=1.0).SerializeToString()
    response = raw(iter([b"\xff\xff\xff", good]))
    assert [o.code for o in response.outcomes] == [
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.NOT_FOUND.value[0],
    ]
    assert "not a valid scout.v1.RewardRequest" in response.outcomes[0].message

    stub = scout_pb2_grpc.RecommenderStub(channel)
    too_many = (scout_pb2.RewardRequest(event_id="", item_id="i") for _ in range(MAX_STREAM_REWARDS + 1))
    with pytest.raises(grpc.RpcError) as info:
        stub.RewardStream(too_many)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_STREAM_REWARDS} messages" in info.value.details()


@pytest.mark.parametrize("module", ["v1alpha", "v1"])
def test_reflection_v1_and_v1alpha(channel, module: str) -> None:
    method = f"/grpc.reflection.{module}.ServerReflection/ServerReflectionInfo"
    info = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="scout.v1.Recommender"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{module}.ServerReflection"),
    ]
    listed, scout_file, reflection_file = list(info(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"scout.v1.Recommender", "grpc.health.v1.Health"} <= names
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in scout_file.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {"Recommend", "Reward", "RewardStream"} <= methods
    described = reflection_file.file_descriptor_response.file_descriptor_proto
    assert (
        described and descriptor_pb2.FileDescriptorProto.FromString(described[0]).package == f"grpc.reflection.{module}"
    )
    assert reflection_pb2_grpc.ServerReflectionStub  # the v1alpha stub still works as before (test_rpc covers it)


def test_request_id_is_echoed_or_generated(channel) -> None:
    stub = scout_pb2_grpc.RecommenderStub(channel)
    _, call = stub.Recommend.with_call(
        scout_pb2.RecommendRequest(unit_id="u", surface="home", num_items=2), metadata=(("x-request-id", "abc-123"),)
    )
    assert ("x-request-id", "abc-123") in tuple(call.trailing_metadata())
    generated = set()
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(scout_pb2.RecommendRequest(unit_id="", surface="home", num_items=2))
        generated.add(dict(info.value.trailing_metadata())["x-request-id"])
    assert len(generated) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in generated)


def test_json_logs_carry_the_request_id() -> None:
    record = logging.LogRecord("scout.x", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    token = request_id.set("req-42")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "hello there" and entry["request_id"] == "req-42" and entry["level"] == "WARNING"
    assert entry["time"].endswith("Z") and "\n" not in line


def test_logs_follow_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that logs after ``sys.stderr`` was replaced and the old one closed writes to the new one."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        configure("INFO", "text")
        monkeypatch.setattr(sys, "stderr", second)
        first.close()
        logging.getLogger("scout.test").info("after the swap")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "scout.test: after the swap" in second.getvalue() and "Logging error" not in second.getvalue()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def test_metrics_move_with_the_traffic(index_dir, clean_redis, tmp_path) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs", reward_window_s=60.0)
    settings = replace(settings, server=replace(settings.server, metrics_port=0, health_interval_s=0.1))
    running, thread = run_server(settings)
    try:
        port = running.server.metrics_port
        assert port
        recommend_ok = 'scout_rpc_requests_total{code="OK",method="scout.v1.Recommender/Recommend"}'
        before = scrape(port)
        assert recommend_ok not in before
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            replies = [recommend(stub, f"user-{k}") for k in range(7)]
            stub.Reward(scout_pb2.RewardRequest(event_id=replies[0].event_id, item_id=replies[0].items[0].item_id))
            with pytest.raises(grpc.RpcError):
                stub.Recommend(scout_pb2.RecommendRequest(unit_id="u", surface="attic", num_items=2))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = scrape(port)
            if after.get("scout_pending_decisions", 0) >= 7:
                break
            time.sleep(0.1)
        assert after[recommend_ok] == 7
        assert after['scout_rpc_requests_total{code="NOT_FOUND",method="scout.v1.Recommender/Recommend"}'] == 1
        assert after['scout_rpc_latency_seconds_count{code="OK",method="scout.v1.Recommender/Recommend"}'] == 7
        assert after['scout_rewards_total{outcome="accepted"}'] == 1
        slots = sum(v for k, v in after.items() if k.startswith("scout_served_slots_total"))
        assert slots == 21
        assert after["scout_pending_decisions"] == 7
        assert after["scout_export_lag_seconds"] == 0  # nothing joined yet (60 s windows)
        assert f'scout_index_info{{version="{running.server.service.recommender.index.version}"}}' in after
        assert any(k.startswith("scout_policy_version{") for k in after)
        assert f'scout_config_info{{version="{running.server.service.recommender.config_version}"}}' in after
        assert 0 <= after['scout_emerging_exposure_share{experiment="home-ranking"}'] <= 1
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
