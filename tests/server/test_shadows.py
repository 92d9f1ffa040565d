"""Shadow policies: their logged probabilities of served slates equal what offline replay recomputes for them."""

import json
from dataclasses import replace

import grpc
import numpy as np
import pytest
from conftest import make_settings, run_server

from bandits.features import feature_dim
from bandits.registry import create_policy
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, DecisionLog, records_to_table
from offline_eval.replay import replay
from server.pb import scout_pb2, scout_pb2_grpc
from server.recommender import shadow_key
from server.settings import SettingsError, ShadowPolicy, load_settings

pytestmark = pytest.mark.redis
SHADOWS = (ShadowPolicy("greedy", "epsilon_greedy", (("epsilon", 0.05),)), ShadowPolicy("soft", "softmax", ()))


def test_logged_shadow_probabilities_equal_the_offline_replay(index: IndexArtifact, index_dir, clean_redis, tmp_path):
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs", reward_window_s=60.0)  # nothing learns
    experiment = settings.experiments[0]
    variants = tuple(replace(v, shadows=SHADOWS) if v.name == "linucb" else v for v in experiment.variants)
    settings = replace(settings, experiments=(replace(experiment, variants=variants),))
    running, thread = run_server(settings)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            replies = [
                stub.Recommend(
                    scout_pb2.RecommendRequest(
                        unit_id=f"user-{k}",
                        surface="home",
                        num_items=4,
                        context={"mobile": float(k % 2)},
                        seed_item_ids=[f"item-{k + 1:07d}"],
                    )
                )
                for k in range(40)
            ]
        store = running.server.store
        records = []
        for reply in replies:
            raw = running.run(store.client.hget(store.pending_key(reply.event_id), "decision"))
            record = json.loads(raw)
            records.append(record | {"rewards": [0.0] * 4, "reward_observed": [False] * 4, "joined_at": 0})
        policies = running.server.service.recommender.policies
        assert policies.shadows[("home-ranking", "linucb")] == (
            ("greedy", shadow_key("linucb", "greedy")),
            ("soft", shadow_key("linucb", "soft")),
        )
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
    shadowed = [r for r in records if r["variant"] == "linucb"]
    assert shadowed and all(json.loads(r["shadows"]) == {} for r in records if r["variant"] != "linucb")
    table = records_to_table(shadowed)
    log = DecisionLog({name: table.column(name).to_pylist() for name in SCHEMA.names})
    dim = feature_dim(index.dim, len(experiment.context_keys))
    for shadow in SHADOWS:
        logged = [json.loads(r["shadows"])[shadow.name] for r in shadowed]
        assert {entry["policy"] for entry in logged} == {shadow.policy} and {e["version"] for e in logged} == {0}
        # What `scout evaluate --policy <shadow.policy> --param ...` recomputes from the logs: the same policy,
        # fresh (version 0, as the server's shadow was: nothing joined, so nothing was learned).
        recomputed = replay(log, index, create_policy(shadow.policy, dim, dict(shadow.params))).target_propensity
        for row, entry in enumerate(logged):
            served = len(entry["propensities"])
            assert np.allclose(recomputed[row, :served], entry["propensities"], rtol=1e-9, atol=1e-12)
            assert entry["slate_probability"] == pytest.approx(float(np.prod(entry["propensities"])))
        assert any(e["slate_probability"] != r["slate_probability"] for e, r in zip(logged, shadowed, strict=True))


def test_shadow_settings_are_checked(tmp_path) -> None:
    config = tmp_path / "scout.toml"
    config.write_text(
        '[[experiments]]\nname = "e"\nsalt = "s"\nsurfaces = ["home"]\ncandidates = 10\n'
        '[[experiments.variants]]\nname = "v"\nweight = 1.0\npolicy = "linucb"\n'
        '[[experiments.variants.shadows]]\nname = "x"\npolicy = "softmax"\nparams = { temperature = -1.0 }\n'
    )
    with pytest.raises(SettingsError, match=r"variants\[0\]\.shadows\[0\]\.params\.temperature"):
        load_settings(config, environ={})
