"""Bounded requests: magnitudes, string and list sizes, short error messages, what the decision record keeps, and
never a non-finite score or propensity served or logged (a real server on port 0, a real redis-server)."""

import json
import math
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
import redis

from bandits.features import feature_dim
from bandits.linucb import LinUCB
from embeddings.index import IndexArtifact
from server.assignment import assign
from server.errors import InvalidArgument
from server.pb import scout_pb2, scout_pb2_grpc
from server.recommender import PolicyBook, Recommender, RecommendInput
from server.settings import load_settings
from server.validation import MAX_CONTEXT_ENTRIES, MAX_IDS, echo

MB = 1 << 20
SHORT = 400  # every error message stays under this many characters, whatever the request held


@pytest.fixture
def stub(scout):
    with grpc.insecure_channel(scout.target) as channel:
        yield scout_pb2_grpc.RecommenderStub(channel)


def fails(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def recommend(**overrides: object) -> scout_pb2.RecommendRequest:
    fields = {"unit_id": "user-000001", "surface": "home", "num_items": 3, "context": {"mobile": 1.0}} | overrides
    return scout_pb2.RecommendRequest(**fields)


def test_echo_cuts_long_values() -> None:
    assert echo("abc") == "'abc'"
    cut = echo("x" * MB)
    assert len(cut) < 80 and cut.endswith(f"({MB} characters)")


@pytest.mark.redis
def test_context_and_reward_magnitudes_are_bounded(stub) -> None:
    code, message = fails(lambda: stub.Recommend(recommend(context={"mobile": 1e200})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("context['mobile']"), message
    assert "1e+06" in message
    reply = stub.Recommend(recommend(context={"mobile": -1e6}))  # the limit itself is allowed
    item = reply.items[0].item_id
    for value in (1e308, -1e7, float("inf")):
        code, message = fails(
            lambda v=value: stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=v))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("value"), message
    assert stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=1e6)).accepted


@pytest.mark.redis
@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"surface": "s" * MB}, grpc.StatusCode.INVALID_ARGUMENT, "surface"),
        ({"surface": "s" * 100}, grpc.StatusCode.NOT_FOUND, "surface"),
        ({"unit_id": "u" * MB}, grpc.StatusCode.INVALID_ARGUMENT, "unit_id"),
        ({"context": {"k" * MB: 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "context"),
        ({"context": {"k" * 100: 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "context["),
        (
            {"context": {f"k{i}": 1.0 for i in range(MAX_CONTEXT_ENTRIES + 1)}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "context",
        ),
        ({"seed_item_ids": ["i" * MB]}, grpc.StatusCode.INVALID_ARGUMENT, "seed_item_ids[0]"),
        ({"exclude_item_ids": ["x"] * (MAX_IDS + 1)}, grpc.StatusCode.INVALID_ARGUMENT, "exclude_item_ids"),
        ({"exclude_item_ids": ["ok", "e" * MB]}, grpc.StatusCode.INVALID_ARGUMENT, "exclude_item_ids[1]"),
        ({"num_items": 2**31 - 1}, grpc.StatusCode.INVALID_ARGUMENT, "num_items"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_oversized_recommend_fields_get_short_errors_naming_the_field(stub, overrides, code, field) -> None:
    got, message = fails(lambda: stub.Recommend(recommend(**overrides)))
    assert got == code and message.startswith(field) and len(message) < SHORT, (got, message[:500])


@pytest.mark.redis
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": "e" * MB, "item_id": "x"}, "event_id"),
        ({"event_id": "e" * 65, "item_id": "x"}, "event_id"),
        ({"event_id": "e", "item_id": "i" * MB}, "item_id"),
        ({"event_id": "e", "item_id": "a\nb"}, "item_id"),
    ],
)
def test_oversized_reward_fields_get_short_errors_naming_the_field(stub, fields, field) -> None:
    code, message = fails(lambda: stub.Reward(scout_pb2.RewardRequest(value=1.0, **fields)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(field) and len(message) < SHORT


@pytest.mark.redis
def test_decision_record_keeps_only_exclusions_in_the_index(scout, stub) -> None:
    excluded = ["item-0000003", "not-an-item", "item-0000003", "z" * 500, *(f"junk-{i}" for i in range(900))]
    reply = stub.Recommend(recommend(exclude_item_ids=excluded))
    assert "item-0000003" not in {i.item_id for i in reply.items}
    client = redis.Redis.from_url(scout.server.settings.redis_url)
    stored = client.hget(f"{{scout}}:pending:{reply.event_id}", "decision")
    client.close()
    assert json.loads(stored)["exclude_item_ids"] == ["item-0000003"]
    assert len(stored) < 10_000, "the record keeps what replay needs, not what the request sent"


def poisoned(dim: int) -> LinUCB:
    """A LinUCB whose (finite, loadable) state overflows every score: a tiny A makes theta infinite."""
    policy = LinUCB(dim, alpha=0.5)
    with np.errstate(over="ignore"):
        policy._load_state({"A": np.eye(dim) * 1e-300, "b": np.full(dim, 1e10)})
    return policy


def test_non_finite_scores_fall_back_to_uniform_slates_with_exact_propensities(index: IndexArtifact) -> None:
    settings = load_settings(environ={})
    book = PolicyBook(settings, index.dim)
    experiment = settings.experiments[0]
    dim = feature_dim(index.dim, len(experiment.context_keys))
    for variant in experiment.variants:
        if variant.policy == "linucb":
            book.swap(experiment.name, variant.name, poisoned(dim))
    recommender = Recommender(settings, index, book, seed=3)
    units = [f"u{i}" for i in range(400) if assign(experiment, f"u{i}").policy == "linucb"][:100]
    firsts = []
    for unit in units:
        decision = recommender.decide(RecommendInput(unit, "home", 5, {"mobile": 1.0}, ("item-0000001",)))
        record = decision.record
        json.dumps(record, allow_nan=False)  # nothing non-finite is logged
        k = len(record["candidate_ids"])
        assert record["propensities"] == [1.0 / (k - slot) for slot in range(5)]
        assert record["slate_probability"] == pytest.approx(math.prod(record["propensities"]))
        assert decision.scores == (0.0,) * 5
        firsts.append(record["item_ids"][0])
    assert recommender.fallbacks == len(units)
    assert len(set(firsts)) > 15, "the fallback draws uniformly, not always the same item"

    healthy = Recommender(settings, index, PolicyBook(settings, index.dim), seed=3)
    for unit in units[:20]:
        healthy.decide(RecommendInput(unit, "home", 5, {"mobile": 1.0}, ("item-0000001",)))
    assert healthy.fallbacks == 0


@pytest.mark.redis
def test_a_poisoned_snapshot_is_never_served_as_nan(scout, stub, index: IndexArtifact) -> None:
    experiment = scout.server.settings.experiments[0]
    variant = next(v for v in experiment.variants if v.policy == "linucb")
    policy = poisoned(feature_dim(index.dim, len(experiment.context_keys)))
    policy.version = 10**6
    features = np.random.default_rng(0).uniform(-1, 1, (30, policy.feature_dim))
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(policy.scores(features)).all(), "precondition: this state overflows the scores"
    client = redis.Redis.from_url(scout.server.settings.redis_url)
    client.hset(
        scout.server.store.policy_key(experiment.name, variant.name),
        mapping={"version": policy.version, "state": policy.to_bytes()},
    )
    units = [f"p{i}" for i in range(200) if assign(experiment, f"p{i}").name == variant.name]
    deadline = time.monotonic() + 10
    while stub.Recommend(recommend(unit_id=units[0])).policy_version != str(10**6):
        assert time.monotonic() < deadline, "the server never swapped in the snapshot"
        time.sleep(0.05)
    for unit in units[:20]:
        reply = stub.Recommend(recommend(unit_id=unit, num_items=4))
        assert reply.policy_version == str(10**6)
        assert all(math.isfinite(i.score) for i in reply.items)
        assert [i.propensity for i in reply.items] == [1 / 30, 1 / 29, 1 / 28, 1 / 27]
        assert reply.slate_probability == pytest.approx(1 / (30 * 29 * 28 * 27))
        stored = json.loads(client.hget(f"{{scout}}:pending:{reply.event_id}", "decision"))
        assert stored["propensities"] == [1 / 30, 1 / 29, 1 / 28, 1 / 27]
    client.close()


def test_limits_come_from_settings(index: IndexArtifact) -> None:
    settings = load_settings(environ={})
    settings = replace(settings, limits=replace(settings.limits, max_context_abs=10.0))
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=0)
    recommender.decide(RecommendInput("u", "home", 2, {"mobile": 10.0}))
    with pytest.raises(InvalidArgument, match=r"context\['mobile'\] must be between -10 and 10"):
        recommender.decide(RecommendInput("u", "home", 2, {"mobile": 10.5}))


def test_num_items_beyond_the_experiments_candidates_is_refused(index: IndexArtifact) -> None:
    settings = load_settings(environ={})  # max_num_items 50; the default experiment ranks 30 candidates
    candidates = settings.experiments[0].candidates
    assert settings.server.max_num_items > candidates
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=0)
    assert len(recommender.decide(RecommendInput("u", "home", candidates, {})).scores) == candidates
    with pytest.raises(InvalidArgument, match=rf"^num_items must be at most {candidates}, .*surface 'home'.*got 31$"):
        recommender.decide(RecommendInput("u", "home", candidates + 1, {}))  # was a silently shorter slate
    # Two experiments share the surface in one layer: the limit is the smaller one's, whichever a unit lands in.
    wide = replace(settings.experiments[0], name="wide", salt="w", candidates=100, traffic=0.5)
    narrow = replace(settings.experiments[0], traffic=0.5)
    shared = replace(settings, experiments=(narrow, replace(wide, layer=narrow.layer_name)))
    recommender = Recommender(shared, index, PolicyBook(shared, index.dim), seed=0)
    landed = {recommender.validate(RecommendInput(f"u{k}", "home", 5, {})).experiment.name for k in range(40)}
    assert landed == {"home-ranking", "wide"}
    for k in range(40):
        with pytest.raises(InvalidArgument, match=f"at most {candidates}"):
            recommender.validate(RecommendInput(f"u{k}", "home", candidates + 1, {}))


@pytest.mark.redis
def test_a_value_just_beyond_a_limit_is_shown_as_sent(stub) -> None:
    code, message = fails(lambda: stub.Recommend(recommend(context={"mobile": 1000000.5})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.endswith("got 1000000.5"), message  # not 1e+06
    reply = stub.Recommend(recommend())
    reward = scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=-1000001.0)
    code, message = fails(lambda: stub.Reward(reward))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.endswith("got -1000001.0"), message


@pytest.mark.redis
def test_outcome_messages_echo_ids_cut_short(stub) -> None:
    reply = stub.Recommend(recommend())
    unprintable = "\U000695a9" * 512  # repr() would make each one ten characters long
    code, message = fails(
        lambda: stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=unprintable, value=1.0))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("item_id") and len(message) < SHORT
    code, message = fails(lambda: stub.Reward(scout_pb2.RewardRequest(event_id="\x01" * 64, item_id="x", value=1.0)))
    assert code == grpc.StatusCode.NOT_FOUND and message.startswith("event_id") and len(message) < SHORT
