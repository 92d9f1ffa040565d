"""The Recommender over real gRPC (port 0) and a real redis-server: round trips, status codes, messages."""

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.assignment import assign, bucket
from server.pb import scout_pb2, scout_pb2_grpc
from server.settings import load_settings

pytestmark = pytest.mark.redis


def request(**overrides: object) -> scout_pb2.RecommendRequest:
    fields = {
        "unit_id": "user-000001",
        "surface": "home",
        "num_items": 4,
        "context": {"mobile": 1.0},
        "seed_item_ids": ["item-0000001", "item-0000002"],
    } | overrides
    return scout_pb2.RecommendRequest(**fields)


@pytest.fixture
def stub(scout):
    with grpc.insecure_channel(scout.target) as channel:
        yield scout_pb2_grpc.RecommenderStub(channel)


def code_and_message(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_recommend_then_reward_round_trip(stub) -> None:
    reply = stub.Recommend(request(exclude_item_ids=["item-0000003"]))
    assert reply.event_id and reply.experiment == "home-ranking" and reply.variant in ("control", "linucb")
    assert len(reply.items) == 4 and [i.position for i in reply.items] == [0, 1, 2, 3]
    assert all(0 < i.propensity <= 1 for i in reply.items) and "item-0000003" not in {i.item_id for i in reply.items}
    assert reply.slate_probability == pytest.approx(__import__("math").prod(i.propensity for i in reply.items))
    assert all(i.creator_id.startswith("creator-") for i in reply.items)
    first = stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[1].item_id, value=1.0))
    assert first.accepted and not first.duplicate
    again = stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[1].item_id, value=5.0))
    assert again.accepted and again.duplicate


def test_same_unit_same_variant(stub) -> None:
    variants = {stub.Recommend(request(unit_id="sticky")).variant for _ in range(5)}
    assert len(variants) == 1


def test_reward_errors(stub) -> None:
    reply = stub.Recommend(request())
    code, message = code_and_message(lambda: stub.Reward(scout_pb2.RewardRequest(event_id="nope", item_id="x")))
    assert code == grpc.StatusCode.NOT_FOUND and "event_id 'nope'" in message
    code, message = code_and_message(
        lambda: stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id="item-9999999", value=1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_id 'item-9999999' was not served" in message
    code, message = code_and_message(
        lambda: stub.Reward(
            scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=float("nan"))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("value must be finite")
    code, message = code_and_message(lambda: stub.Reward(scout_pb2.RewardRequest(item_id="x")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("event_id")


def test_late_reward_is_accepted_as_late_once(stub) -> None:
    reply = stub.Recommend(request())
    time.sleep(1.2)  # reward window 0.5 s in tests, joiner polls every 50 ms
    item = reply.items[0].item_id
    late = stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=1))
    assert late.accepted and late.late and not late.duplicate
    again = stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=1))
    assert again.accepted and again.late and again.duplicate
    code, message = code_and_message(
        lambda: stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id="item-9999999", value=1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "was not served" in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"unit_id": ""}, "unit_id"),
        ({"num_items": 0}, "num_items"),
        ({"num_items": -3}, "num_items"),
        ({"num_items": 11}, "num_items"),
        ({"context": {"mobile": float("inf")}}, "context['mobile']"),
        ({"context": {"mobile": float("nan")}}, "context['mobile']"),
        ({"context": {"typo": 1.0}}, "context['typo']"),
        ({"surface": ""}, "surface"),
        ({"seed_item_ids": [""]}, "seed_item_ids"),
    ],
)
def test_invalid_requests_name_the_field(stub, overrides: dict, field: str) -> None:
    code, message = code_and_message(lambda: stub.Recommend(request(**overrides)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(field), message


def test_unknown_surface_is_not_found(stub) -> None:
    code, message = code_and_message(lambda: stub.Recommend(request(surface="attic")))
    assert code == grpc.StatusCode.NOT_FOUND and "surface 'attic'" in message


def test_health_and_reflection(scout) -> None:
    with grpc.insecure_channel(scout.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "scout.v1.Recommender"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {"scout.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_assignment_matches_fixed_vectors_and_weights() -> None:
    # Pinned: sha256("home-ranking-v1:user-000001") -> first 8 bytes as a big-endian fraction of 2**64.
    assert bucket("home-ranking-v1", "user-000001") == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"home-ranking-v1:user-000001").digest()[:8], "big") / 2**64
    )
    assert round(bucket("salt", "unit"), 6) == round(bucket("salt", "unit"), 6)
    experiment = load_settings(environ={}).experiments[0]
    share = sum(assign(experiment, f"u{i}").name == "control" for i in range(20000)) / 20000
    assert abs(share - 0.5) < 0.02
