"""The Admin service over real gRPC and a real Redis: listing, pausing, index reloads, counters, status codes."""

import json
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import make_settings, run_server

from embeddings.builder import build_artifact
from embeddings.encoder import EncoderConfig
from embeddings.index import IndexArtifact
from offline_eval.world import SyntheticWorld
from server.assignment import assign
from server.indexes import point_current
from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = pytest.mark.redis


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def stubs(scout):
    with grpc.insecure_channel(scout.target) as channel:
        yield scout_pb2_grpc.AdminStub(channel), scout_pb2_grpc.RecommenderStub(channel)


def test_list_experiments_names_variants_policies_and_versions(scout, stubs) -> None:
    admin, _ = stubs
    listed = admin.ListExperiments(scout_pb2.ListExperimentsRequest())
    assert listed.index_version == scout.server.service.recommender.index.version
    (experiment,) = listed.experiments
    assert experiment.name == "home-ranking" and list(experiment.surfaces) == ["home"]
    assert [(v.name, v.policy, v.weight, v.paused) for v in experiment.variants] == [
        ("control", "softmax", 0.5, False),
        ("linucb", "linucb", 0.5, False),
    ]
    assert json.loads(experiment.variants[1].params_json) == {"alpha": 0.5}


def test_a_paused_variant_is_served_by_the_first_unpaused_one(scout, stubs) -> None:
    admin, recommender = stubs
    experiment = scout.server.settings.experiments[0]
    units = [u for u in (f"user-{k}" for k in range(200)) if assign(experiment, u).name == "linucb"][:5]
    assert units

    def variants() -> set[str]:
        requests = (scout_pb2.RecommendRequest(unit_id=u, surface="home", num_items=2) for u in units)
        return {recommender.Recommend(r).variant for r in requests}

    assert variants() == {"linucb"}
    paused = admin.SetVariantPaused(
        scout_pb2.SetVariantPausedRequest(experiment="home-ranking", variant="linucb", paused=True)
    )
    assert list(paused.paused) == ["linucb"]
    assert variants() == {"control"}
    assert next(
        v
        for v in admin.ListExperiments(scout_pb2.ListExperimentsRequest()).experiments[0].variants
        if v.name == "linucb"
    ).paused
    code, message = code_of(
        lambda: admin.SetVariantPaused(
            scout_pb2.SetVariantPausedRequest(experiment="home-ranking", variant="control", paused=True)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no variant" in message
    admin.SetVariantPaused(scout_pb2.SetVariantPausedRequest(experiment="home-ranking", variant="linucb", paused=False))
    assert variants() == {"linucb"}


def test_admin_requests_are_validated(stubs) -> None:
    admin, _ = stubs
    code, message = code_of(
        lambda: admin.SetVariantPaused(scout_pb2.SetVariantPausedRequest(experiment="", variant="x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("experiment")
    code, message = code_of(
        lambda: admin.SetVariantPaused(scout_pb2.SetVariantPausedRequest(experiment="nope", variant="x"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "home-ranking" in message
    code, message = code_of(
        lambda: admin.SetVariantPaused(scout_pb2.SetVariantPausedRequest(experiment="home-ranking", variant="x" * 5000))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "(5000 characters)" in message
    code, message = code_of(lambda: admin.ReloadIndex(scout_pb2.ReloadIndexRequest()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not a versions root" in message
    code, message = code_of(lambda: admin.ReloadIndex(scout_pb2.ReloadIndexRequest(version="v" * 513)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("version"), message  # request first


def test_counters_follow_the_traffic(scout, stubs) -> None:
    admin, recommender = stubs
    reply = recommender.Recommend(scout_pb2.RecommendRequest(unit_id="u1", surface="home", num_items=2))
    recommender.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=1.0))
    counters = admin.GetCounters(scout_pb2.GetCountersRequest()).counters
    assert counters["decisions"] == 1 and counters[f"decisions/home-ranking/{reply.variant}"] == 1
    assert counters["rewards/accepted"] == 1 and counters["fallbacks"] == 0
    assert counters["pending_decisions"] in (0, 1) and "learner/applied" in counters


@pytest.mark.slow
def test_reload_index_points_current_and_swaps(
    world: SyntheticWorld, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    root = tmp_path / "versions"
    root.mkdir()
    first = index.publish(root).name
    second_version = build_artifact(world.catalog, EncoderConfig(dim=index.dim, seed=7)).publish(root).name
    point_current(root, first)
    settings = make_settings(root, clean_redis, tmp_path / "logs")
    settings = replace(settings, server=replace(settings.server, index_watch_interval_s=3600.0))  # only the call swaps
    running, thread = run_server(settings)
    try:
        with grpc.insecure_channel(running.target) as channel:
            admin = scout_pb2_grpc.AdminStub(channel)
            code, message = code_of(lambda: admin.ReloadIndex(scout_pb2.ReloadIndexRequest(version="v-missing")))
            assert code == grpc.StatusCode.NOT_FOUND and "not published" in message
            reply = admin.ReloadIndex(scout_pb2.ReloadIndexRequest(version=second_version))
            assert reply.swapped and reply.index_version == second_version
            request = scout_pb2.RecommendRequest(unit_id="u", surface="home", num_items=2)
            assert scout_pb2_grpc.RecommenderStub(channel).Recommend(request).index_version == second_version
            back = admin.ReloadIndex(scout_pb2.ReloadIndexRequest(version=first))
            assert back.swapped and back.index_version == first
            assert not admin.ReloadIndex(scout_pb2.ReloadIndexRequest()).swapped
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
