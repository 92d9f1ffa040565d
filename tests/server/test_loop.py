"""The whole loop: decisions and rewards through gRPC, joined after the window, learned from, exported once."""

import time

import grpc
import numpy as np
import pytest
import redis

from offline_eval.logs import read_logs
from offline_eval.world import SyntheticWorld, item_index
from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_every_decision_is_exported_exactly_once_with_its_rewards(scout, world: SyntheticWorld) -> None:
    rng = np.random.default_rng(5)
    sent: dict[str, dict[str, float]] = {}
    with grpc.insecure_channel(scout.target) as channel:
        stub = scout_pb2_grpc.RecommenderStub(channel)
        for _ in range(200):
            r = world.sample_request(rng)
            reply = stub.Recommend(
                scout_pb2.RecommendRequest(
                    unit_id=r.unit_id, surface="home", num_items=3, context=r.context, seed_item_ids=r.seed_item_ids
                )
            )
            served = item_index([i.item_id for i in reply.items])
            clicks = world.sample_clicks(rng, r.user, served, np.array([r.context["mobile"], r.context["evening"]]))
            sent[reply.event_id] = {}
            for item, click in zip(reply.items, clicks, strict=True):
                if click:
                    stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item.item_id, value=2.0))
                    sent[reply.event_id][item.item_id] = 2.0
        deadline = time.monotonic() + 20
        while scout.server.exported < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        late = stub.Recommend(scout_pb2.RecommendRequest(unit_id="late", surface="home", num_items=2))
    version = scout.run(
        scout.server.store.client.hget(scout.server.store.policy_key("home-ranking", "control"), "version")
    )
    scout.stop()  # the exporter flushes on shutdown: the last decision is pending, not lost

    log = read_logs(scout.server.settings.export.log_dir)
    ids = log["event_id"]
    assert len(ids) == len(set(ids)), "a decision was exported twice"
    assert set(sent) <= set(ids)
    for event_id, items, rewards, observed in zip(
        ids, log["item_ids"], log["rewards"], log["reward_observed"], strict=True
    ):
        if event_id in sent:
            assert rewards == [sent[event_id].get(i, 0.0) for i in items]
            assert observed == [i in sent[event_id] for i in items]
    assert int(version) > 0, "the learner never published a snapshot"
    assert late.event_id not in ids
    client = redis.Redis.from_url(scout.server.settings.redis_url)
    assert client.zrange("{scout}:due", 0, -1) == [late.event_id.encode()], "the in-window decision must wait in Redis"
    client.close()
