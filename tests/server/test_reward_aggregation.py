"""Several rewards for one served item: first, sum or max per experiment, with reward ids that make retries safe
(a real server, Redis and exporter; the aggregation is logged with every decision)."""

import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import make_settings, run_server

from offline_eval.logs import read_logs
from server.pb import scout_pb2, scout_pb2_grpc
from server.settings import SettingsError, load_settings

pytestmark = pytest.mark.redis
# Per event: the rewards sent for its first item (value, reward_id), in order.
SENT = [(1.0, "a"), (2.5, "b"), (2.5, "b"), (0.5, "c")]
EXPECTED = {"first": 1.0, "sum": 4.0, "max": 2.5}
DUPLICATES = {"first": [False, True, True, True], "sum": [False, False, True, False], "max": [False, False, True, True]}


@pytest.mark.parametrize("aggregation", ["first", "sum", "max"])
def test_rewards_combine_as_the_experiment_says_and_a_repeated_reward_id_counts_once(
    index_dir: Path, clean_redis: str, tmp_path: Path, aggregation: str
) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs", reward_window_s=0.5)
    experiment = replace(settings.experiments[0], reward_aggregation=aggregation)
    running, thread = run_server(replace(settings, experiments=(experiment,)))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            reply = stub.Recommend(scout_pb2.RecommendRequest(unit_id="u1", surface="home", num_items=2))
            item = reply.items[0].item_id
            duplicates = []
            for value, reward_id in SENT:
                request = scout_pb2.RewardRequest(
                    event_id=reply.event_id, item_id=item, value=value, reward_id=reward_id
                )
                answer = stub.Reward(request)
                assert answer.accepted and not answer.late
                duplicates.append(answer.duplicate)
            assert duplicates == DUPLICATES[aggregation]
            with pytest.raises(grpc.RpcError) as info:
                stub.Reward(
                    scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=1.0, reward_id="r" * 129)
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reward_id" in info.value.details()
        deadline = time.monotonic() + 30
        logs = None
        while time.monotonic() < deadline:
            if any((tmp_path / "logs").rglob("*.parquet")):
                logs = read_logs(tmp_path / "logs")
                break
            time.sleep(0.1)
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
    assert logs is not None and len(logs) == 1
    assert logs["rewards"][0][0] == EXPECTED[aggregation] and logs["reward_aggregation"] == [aggregation]


def test_an_unknown_aggregation_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "scout.toml"
    defaults = load_settings(environ={}).experiments[0]
    path.write_text(
        f'[[experiments]]\nname = "x"\nsalt = "s"\nsurfaces = ["home"]\ncandidates = {defaults.candidates}\n'
        'reward_aggregation = "mean"\n[[experiments.variants]]\nname = "a"\npolicy = "linucb"\nweight = 1.0\n'
    )
    with pytest.raises(SettingsError, match=r"experiments\[0\]\.reward_aggregation.*must be one of first, sum, max"):
        load_settings(path, environ={})
