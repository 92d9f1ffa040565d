"""The retrieval-side quota: a variant's candidates include emerging creators' items from a second search, the
merged list is logged, and replay rebuilds the same candidates and propensities (real server and Redis)."""

import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import make_settings, run_server

from embeddings.index import IndexArtifact
from offline_eval.logs import records_to_table
from offline_eval.replay import replay_table
from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = pytest.mark.redis
QUOTA = 6


def test_a_candidate_quota_brings_emerging_creators_into_retrieval_and_replays(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs", reward_window_s=60.0)
    experiment = settings.experiments[0]
    variants = (
        replace(experiment.variants[0], weight=1.0, emerging_candidates=QUOTA),  # control: softmax
        replace(experiment.variants[1], weight=1.0),  # linucb, no quota
    )
    running, thread = run_server(replace(settings, experiments=(replace(experiment, variants=variants),)))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            replies = [
                stub.Recommend(
                    scout_pb2.RecommendRequest(
                        unit_id=f"u{k}", surface="home", num_items=5, seed_item_ids=[f"item-{1 + k:07d}"]
                    )
                )
                for k in range(40)
            ]
        store = running.server.store
        records = [
            json.loads(running.run(store.client.hget(store.pending_key(r.event_id), "decision"))) for r in replies
        ]
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
    rule = running.server.service.recommender.rules[(experiment.name, "control")]
    flags = rule.flags(index.creator_popularity, index.creator_age_days)

    def emerging_candidates(record: dict) -> int:
        return int(flags[index.positions(record["candidate_ids"])].sum())

    quota = [r for r in records if r["variant"] == "control"]
    plain = [r for r in records if r["variant"] == "linucb"]
    assert quota and plain
    assert all(r["emerging_candidates"] == QUOTA and len(r["candidate_ids"]) == 30 for r in quota)
    assert all(r["emerging_candidates"] == 0 for r in plain)
    assert all(emerging_candidates(r) >= QUOTA for r in quota)
    assert np.mean([emerging_candidates(r) for r in quota]) > np.mean([emerging_candidates(r) for r in plain])
    # Replay rebuilds the logged candidates: the serving policy (not yet updated) reproduces every propensity.
    served = running.server.service.recommender.policies.get(experiment.name, "control")
    joined = [
        r | {"rewards": [0.0] * len(r["item_ids"]), "reward_observed": [False] * len(r["item_ids"]), "joined_at": 0}
        for r in quota
    ]
    data = replay_table(records_to_table(joined), index, served)
    logged = np.array([r["propensities"] for r in quota])
    assert np.allclose(data.target_propensity, logged)
