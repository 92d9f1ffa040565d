"""``scout serve --workers 2``: two serving processes on one port share the traffic and the state (real processes)."""

import collections
import contextlib
import os
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from test_faults import PREFIX, Proc, drained, exported, free_port, wait_for, write_config

from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_two_workers_on_one_port_share_traffic_and_state(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, metrics_port = free_port(), free_port()
    monkeypatch.setenv("SCOUT_METRICS_PORT", str(metrics_port))
    config = write_config(
        tmp_path / "scout.toml", index_dir, tmp_path, port=port
    )  # embedded Redis, owned by the parent
    parent = Proc(["serve", "--config", str(config), "--workers", "2"], tmp_path / "serve.log", port)
    channels = []
    try:
        parent.wait_serving()
        # Each channel owns its connection, and the kernel spreads connections over the two processes.
        channels = [
            grpc.insecure_channel(parent.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(24)
        ]
        stubs = [scout_pb2_grpc.RecommenderStub(c) for c in channels]
        served_by: collections.Counter[str] = collections.Counter()
        crossed = 0  # rewards taken by the other process than the one that made the decision
        sent: dict[str, tuple[str, float]] = {}
        for k, stub in enumerate(stubs):
            request = scout_pb2.RecommendRequest(
                unit_id=f"user-{k}", surface="home", num_items=3, seed_item_ids=["item-0000001"]
            )
            reply, call = stub.Recommend.with_call(request, timeout=30)
            worker = dict(call.trailing_metadata())["x-scout-worker"]
            served_by[worker] += 1
            # The reward goes over another connection, often to the other process: state is shared through Redis.
            other = stubs[(k + 1) % len(stubs)]
            value = float(k + 1)
            answer, reward_call = other.Reward.with_call(
                scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=value),
                timeout=30,
            )
            assert answer.accepted and not answer.duplicate
            crossed += dict(reward_call.trailing_metadata())["x-scout-worker"] != worker
            sent[reply.event_id] = (reply.items[0].item_id, value)
        assert set(served_by) == {"0", "1"} and crossed > 0, (served_by, crossed)  # both served; state is shared
        # The parent's metrics port shows both processes, each sample labelled by its worker.
        families = {f.name: f for f in text_string_to_metric_families(scrape(metrics_port))}
        recommends = {
            s.labels["worker"]: s.value
            for s in families["scout_rpc_requests"].samples
            if s.labels["method"].endswith("/Recommend") and s.labels["code"] == "OK"
        }
        assert recommends == {w: float(n) for w, n in served_by.items()}, (recommends, served_by)
        up = {s.labels["worker"]: s.value for s in families["scout_worker_up"].samples}
        assert up == {"0": 1.0, "1": 1.0, "background": 1.0}
        client = redis.Redis(unix_socket_path=str(tmp_path / "redis" / "redis.sock"))
        wait_for(lambda: drained(client) and client.hget(f"{PREFIX}:learner", "position") is not None, 60, "drain")
        client.close()
        # ...and the background process's: its loops' health and what they did (it had no metrics before)
        families = {f.name: f for f in text_string_to_metric_families(scrape(metrics_port))}
        loops = {s.labels["loop"]: s.value for s in families["scout_loop_up"].samples}
        assert loops == {"joiner": 1.0, "learner": 1.0, "exporter": 1.0, "late-exporter": 1.0, "config-watch": 1.0}
        assert all(s.labels["worker"] == "background" for s in families["scout_loop_up"].samples)
        exported_total = {s.labels["dataset"]: s.value for s in families["scout_exported"].samples}
        assert exported_total["decisions"] == len(sent)
        assert [s.value for s in families["scout_joined"].samples] == [len(sent)]
        learned = {s.labels["outcome"]: s.value for s in families["scout_learner_entries"].samples}
        assert learned == {"applied": len(sent), "skipped": 0}
    finally:
        for channel in channels:
            channel.close()
        assert parent.terminate(timeout_s=60) == 0  # SIGTERM reaches every child; each drains and exits cleanly
    rows = exported(tmp_path / "logs", ["event_id", "item_ids", "rewards", "reward_observed"])
    counts = collections.Counter(r["event_id"] for r in rows)
    assert set(counts) == set(sent) and max(counts.values()) == 1  # every decision exported exactly once
    for row in rows:
        item, value = sent[row["event_id"]]
        assert row["rewards"][row["item_ids"].index(item)] == value and sum(row["reward_observed"]) == 1
    log = parent.log.read_text()
    assert "2 serving processes" in log and "all serving processes stopped" in log


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_workers_need_a_fixed_port(index_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, port=0)
    proc = Proc(["serve", "--config", str(config), "--workers", "2"], tmp_path / "serve.log")
    assert proc.process.wait(timeout=60) == 2
    proc.out.close()
    assert "--workers needs a fixed --port" in proc.log.read_text()


def test_a_single_server_does_not_share_its_port_by_accident(index_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, port=port)
    first = Proc(["serve", "--config", str(config)], tmp_path / "first.log", port)
    try:
        first.wait_serving()
        (tmp_path / "second").mkdir()
        second_config = write_config(tmp_path / "second.toml", index_dir, tmp_path / "second", port=port)
        second = Proc(["serve", "--config", str(second_config)], tmp_path / "second.log", port)
        code = second.process.wait(timeout=60)
        second.out.close()
        assert code != 0 and "bind to address" in second.log.read_text()
    finally:
        first.terminate()


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_children_do_not_outlive_a_killed_parent(index_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the parent left both serving processes and the worker running, unsupervised, on the port: a
    restarted parent then shared it with orphans its metrics and its SIGTERM never reached."""
    port = free_port()
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, port=port)
    parent = Proc(["serve", "--config", str(config), "--workers", "2"], tmp_path / "serve.log", port)
    children: list[int] = []
    try:
        parent.wait_serving()
        wait_for(lambda: len(_children(parent.process.pid)) >= 4, 30, "Redis, two serving processes and the worker")
        children = _children(parent.process.pid)
        parent.kill()
        wait_for(lambda: not any(_alive(c) for c in children), 60, "the children to exit")
    finally:
        parent.terminate()
        for child in children:  # on failure, leave no orphan holding the port for the tests after this one
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    with grpc.insecure_channel(parent.target) as channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=2)  # nothing answers on the port any more
