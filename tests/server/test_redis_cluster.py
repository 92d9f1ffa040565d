"""Scout on a real three-node Redis Cluster: decisions spread over six shards (hash tags), every one exported once.

Redis 7 refuses a script that touches a key it did not declare (or one in another slot), so traffic through
every script (record, reward, expose, join, publish, lease) shows they declare what they touch.
"""

from pathlib import Path

import grpc
import pytest
import redis
from cluster import redis_cluster
from test_faults import PREFIX, Traffic, check, drained, free_port, start_serve, versions, wait_for, write_config

from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.redis]
SHARDS = 6


def test_a_three_node_cluster_holds_the_state_and_every_decision_is_exported_once(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with redis_cluster(tmp_path / "cluster") as ports:
        monkeypatch.setenv("SCOUT_REDIS_CLUSTER", "true")
        monkeypatch.setenv("SCOUT_REDIS_SHARDS", str(SHARDS))
        config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, f"redis://127.0.0.1:{ports[0]}")
        # Two servers, each with its own joiner, learner and exporters, over the one cluster.
        servers = [start_serve(config, tmp_path, f"serve{i}", free_port()) for i in range(2)]
        client = redis.RedisCluster(host="127.0.0.1", port=ports[1])
        traffic = Traffic([s.target for s in servers], seed=23)
        try:
            wait_for(lambda: len(traffic.ledger.served) >= 150, 90, "traffic")
            with grpc.insecure_channel(servers[0].target) as channel:
                counters = scout_pb2_grpc.AdminStub(channel).GetCounters(scout_pb2.GetCountersRequest()).counters
                assert counters["decisions"] > 0 and "pending_decisions" in counters
                stub = scout_pb2_grpc.RecommenderStub(channel)
                reply = stub.Recommend(scout_pb2.RecommendRequest(unit_id="exposed", surface="home", num_items=2))
                exposed = stub.Expose(scout_pb2.ExposeRequest(event_id=reply.event_id))
                assert exposed.accepted
            ledger = traffic.finish()
            ledger.served[reply.event_id] = [i.item_id for i in reply.items]
            wait_for(lambda: drained(client, SHARDS), 90, "the loop to drain")
            figures = check(tmp_path, ledger, client)
            assert figures["served"] >= 150 and not figures["failed_calls"], figures
            assert versions(client) > 0  # the learner published through the cluster
            position = client.hget(f"{PREFIX}:learner", "position").decode().split(",")
            assert len(position) == SHARDS and all(p != "0-0" for p in position), position
            holders = []
            for port in ports:  # every node holds part of the state
                node = redis.Redis(port=port)
                holders.append(node.dbsize())
                node.close()
            assert all(holders), holders
            assert {f.name.split("-")[2] for f in (tmp_path / "logs").rglob("*.parquet")} == {
                f"s{k}" for k in range(SHARDS)
            }, "each shard is exported to its own files"
        finally:
            traffic.stop.set()
            client.close()
            for server in servers:
                assert server.terminate() == 0
