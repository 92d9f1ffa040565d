"""Fault injection against real processes on loopback: Redis and servers killed, restarted, doubled, poisoned.

Each case runs ``python -m server.cli serve``/``worker`` subprocesses (and a redis-server started here where Redis
is external), drives seeded traffic from client threads that keep a ledger of what they received, injects a fault
mid-traffic, lets the loop drain, and then checks the exported Parquet logs against the ledger with exact counts:

- every served decision (a Recommend answered OK) is in the log exactly once;
- every accepted reward is in its row (late ones in the late-reward dataset, exactly once);
- no row for a decision the client did not receive (after a kill -9 of a *server*, at most the Recommend calls
  that were in flight at that instant and failed; the measured number is printed);
- the learner applied every exported decision exactly once (``applied + skipped == rows``) and its snapshot
  versions grew after the fault.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_api import scrape

from bandits.registry import load_policy
from offline_eval.logs import SCHEMA_VERSION
from server.pb import scout_pb2, scout_pb2_grpc
from server.redis_server import RedisProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]
REPO = Path(__file__).resolve().parents[2]
PREFIX = "{scout}"
VARIANTS = ("control", "linucb")
WINDOW_S = 0.4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, index_dir: Path, root: Path, redis_url: str = "", port: int = 0) -> Path:
    path.write_text(
        f'redis_url = "{redis_url}"\n'
        f'index = "{index_dir}"\n'
        f'data_dir = "{root / "redis"}"\n'
        f"[server]\nport = {port}\nmax_num_items = 10\nrefresh_interval_s = 0.1\nhealth_interval_s = 0.1\n"
        f"[join]\nreward_window_s = {WINDOW_S}\npoll_interval_s = 0.05\n"
        "[learner]\npoll_interval_s = 0.05\nlease_ttl_s = 1.0\n"
        f'[export]\nlog_dir = "{root / "logs"}"\nflush_rows = 300\nflush_interval_s = 0.3\nconsumer_ttl_s = 1.5\n'
    )
    return path


class Proc:
    """A scout subprocess (serve or worker) with its output in a log file."""

    def __init__(self, args: list[str], log: Path, port: int | None = None) -> None:
        self.port, self.log = port, log
        self.out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "--log-level", "INFO", *args],
            cwd=REPO,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        assert self.port is not None
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
                with contextlib.suppress(grpc.RpcError):
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                time.sleep(0.1)
        raise AssertionError(f"server never SERVING: {self.log.read_text()[-3000:]}")

    def wait_log(self, text: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log.read_text():
            assert self.process.poll() is None, f"process exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never logged {text!r}: {self.log.read_text()[-3000:]}"
            time.sleep(0.1)

    def health(self) -> int:
        with grpc.insecure_channel(self.target) as channel:
            try:
                return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status)
            except grpc.RpcError:
                return -1

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.out.close()


@dataclass
class Ledger:
    """What the clients received."""

    served: dict[str, list[str]] = field(default_factory=dict)
    rewards: dict[tuple[str, str], float] = field(default_factory=dict)
    late: dict[tuple[str, str], float] = field(default_factory=dict)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Traffic:
    """Client threads sending Recommend and Reward calls to the current targets until stopped."""

    def __init__(self, targets: list[str], seed: int, threads: int = 4, context: float = 1.0) -> None:
        self.targets, self.ledger = targets, Ledger()
        self.stop = threading.Event()
        self.context = context
        self.threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        channels: dict[str, grpc.Channel] = {}
        ledger = self.ledger
        try:
            while not self.stop.is_set():
                target = self.targets[int(rng.integers(len(self.targets)))]
                if target not in channels:
                    channels[target] = grpc.insecure_channel(target)
                stub = scout_pb2_grpc.RecommenderStub(channels[target])
                request = scout_pb2.RecommendRequest(
                    unit_id=f"user-{int(rng.integers(200))}",
                    surface="home",
                    num_items=3,
                    context={"mobile": float(rng.integers(2)) * self.context},
                    seed_item_ids=[f"item-{int(rng.integers(1, 3000)):07d}"],
                )
                try:
                    reply = stub.Recommend(request, timeout=5)
                except grpc.RpcError as exc:
                    with ledger.lock:
                        ledger.failed[exc.code().name] += 1
                    time.sleep(0.02)
                    continue
                items = [i.item_id for i in reply.items]
                with ledger.lock:
                    ledger.served[reply.event_id] = items
                for item in items:
                    if rng.random() < 0.4:
                        value = round(float(rng.uniform(0.5, 2.0)), 3)
                        try:
                            answer = stub.Reward(
                                scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item, value=value), timeout=5
                            )
                        except grpc.RpcError:
                            continue
                        with ledger.lock:
                            if answer.accepted and not answer.duplicate:
                                (ledger.late if answer.late else ledger.rewards)[(reply.event_id, item)] = value
                time.sleep(0.005)
        finally:
            for channel in channels.values():
                channel.close()

    def finish(self) -> Ledger:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        return self.ledger


def versions(client: redis.Redis) -> int:
    return sum(int(client.hget(f"{PREFIX}:policy:home-ranking:{v}", "version") or 0) for v in VARIANTS)


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def drained(client: redis.Redis, shards: int = 1) -> bool:
    """Nothing pending, everything joined, exported and learned (in every shard)."""
    tags = [PREFIX] if shards == 1 else [f"{{scout:{k}}}" for k in range(shards)]
    raw = client.hget(f"{PREFIX}:learner", "position")
    positions = raw.decode().split(",") if raw else [None] * shards
    for tag, position in zip(tags, positions, strict=True):
        if client.zcard(f"{tag}:due"):
            return False
        for stream in (f"{tag}:joined", f"{tag}:late"):
            if not client.exists(stream):
                continue
            last = client.xinfo_stream(stream)["last-generated-id"]
            for group in client.xinfo_groups(stream):
                if group["pending"] or group["last-delivered-id"] != last:
                    return False
            if stream.endswith("joined") and client.xlen(stream) and (position or "").encode() != last:
                return False
    return True


def exported(directory: Path, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for file in sorted(directory.rglob("*.parquet")):
        table = pq.read_table(file, columns=columns)
        assert (table.schema.metadata or {}).get(b"scout.schema_version") == SCHEMA_VERSION.encode(), file
        rows += table.to_pylist()
    return rows


def check(root: Path, ledger: Ledger, client: redis.Redis, unseen_allowed: int = 0, injected: int = 0) -> dict:
    """Compare the exported logs with the ledger; returns the measured figures."""
    rows = exported(root / "logs", ["event_id", "item_ids", "rewards", "reward_observed"])
    counts = collections.Counter(r["event_id"] for r in rows)
    duplicated = sum(c - 1 for c in counts.values())
    missing = [e for e in ledger.served if e not in counts]
    unseen = [e for e in counts if e not in ledger.served and not e.startswith("poison-")]
    by_id = {r["event_id"]: r for r in rows}
    wrong_rewards = 0
    for (event_id, item), value in ledger.rewards.items():
        row = by_id.get(event_id)
        k = row["item_ids"].index(item) if row else -1
        if row is None or not row["reward_observed"][k] or row["rewards"][k] != value:
            wrong_rewards += 1
    late_rows = exported(root / "late", ["event_id", "item_id", "value"]) if (root / "late").exists() else []
    late_counts = collections.Counter((r["event_id"], r["item_id"]) for r in late_rows)
    late_ok = all(late_counts[key] == 1 for key in ledger.late) and sum(late_counts.values()) >= len(ledger.late)
    learner = client.hgetall(f"{PREFIX}:learner")
    applied, skipped = int(learner.get(b"applied", 0)), int(learner.get(b"skipped", 0))
    figures = {
        "served": len(ledger.served),
        "rows": len(rows),
        "duplicated": duplicated,
        "missing": len(missing),
        "unseen_rows": len(unseen),
        "rewards": len(ledger.rewards),
        "wrong_rewards": wrong_rewards,
        "late": len(ledger.late),
        "failed_calls": dict(ledger.failed),
        "applied": applied,
        "skipped": skipped,
        "files": len(list((root / "logs").rglob("*.parquet"))),
    }
    print(json.dumps(figures))
    assert duplicated == 0 and not missing and wrong_rewards == 0 and late_ok, figures
    assert len(unseen) <= unseen_allowed, figures
    assert len(rows) == len(ledger.served) + len(unseen) + injected, figures
    assert applied + skipped == len(rows), figures
    return figures


@pytest.fixture
def external_redis(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    holder = [RedisProcess(tmp_path / "ext-redis")]
    yield holder
    holder[0].stop()


def start_serve(config: Path, root: Path, name: str, port: int, *extra: str) -> Proc:
    proc = Proc(["serve", "--config", str(config), "--port", str(port), *extra], root / f"{name}.log", port)
    proc.wait_serving()
    return proc


def finish(traffic: Traffic, client: redis.Redis, timeout_s: float = 60.0) -> Ledger:
    ledger = traffic.finish()
    time.sleep(WINDOW_S)
    wait_for(lambda: drained(client), timeout_s, "the loop to drain")
    return ledger


def test_redis_kill9_and_restart_mid_traffic(index_dir: Path, tmp_path: Path, external_redis) -> None:
    url = external_redis[0].url
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, url)
    metrics_port = free_port()
    serve = start_serve(config, tmp_path, "serve", free_port(), "--metrics-port", str(metrics_port))
    client = redis.Redis.from_url(url)
    traffic = Traffic([serve.target], seed=11)
    from_redis = ("scout_pending_decisions", "scout_join_lag_seconds", "scout_learner_lag_seconds")
    from_redis += ("scout_export_lag_seconds",)
    try:
        time.sleep(2.0)
        before = versions(client)
        assert all(math.isfinite(scrape(metrics_port)[g]) for g in from_redis)
        os.kill(external_redis[0].process.pid, signal.SIGKILL)
        external_redis[0].process.wait()
        external_redis[0].stop()
        wait_for(lambda: serve.health() == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "NOT_SERVING")
        # a backlog's last value would read as current: the gauges read from Redis are unknown during the outage
        wait_for(lambda: all(math.isnan(scrape(metrics_port)[g]) for g in from_redis), 10, "NaN gauges")
        wait_for(lambda: scrape(metrics_port)['scout_loop_up{loop="joiner"}'] == 0, 10, "the joiner down")
        assert scrape(metrics_port)["scout_redis_up"] == 0
        time.sleep(1.0)
        external_redis[0] = RedisProcess(tmp_path / "ext-redis")
        client = redis.Redis.from_url(url)
        wait_for(lambda: serve.health() == health_pb2.HealthCheckResponse.SERVING, 20, "SERVING after restart")
        wait_for(lambda: all(math.isfinite(scrape(metrics_port)[g]) for g in from_redis), 10, "gauges back")
        wait_for(lambda: scrape(metrics_port)['scout_loop_up{loop="joiner"}'] == 1, 20, "the joiner back")
        assert scrape(metrics_port)["scout_redis_up"] == 1
        time.sleep(2.0)
        ledger = finish(traffic, client)
        assert ledger.failed["UNAVAILABLE"] > 0, "the outage never reached a client"
        assert versions(client) > before
        # A Recommend or reward executed by Redis right before the kill but whose reply was lost is the only way
        # to log a decision the client did not see: at most one per client thread.
        check(tmp_path, ledger, client, unseen_allowed=len(traffic.threads))
        assert serve.terminate() == 0
        assert serve.log.read_text().count("joiner: down") == 1, "an outage is logged once, not per retry"
    finally:
        traffic.stop.set()
        serve.terminate()


@pytest.mark.parametrize("embedded", [True, False], ids=["embedded-redis", "external-redis"])
def test_serve_kill9_and_restart_mid_traffic(index_dir: Path, tmp_path: Path, embedded: bool) -> None:
    external = None if embedded else RedisProcess(tmp_path / "ext-redis")
    url = external.url if external else f"unix://{tmp_path / 'redis' / 'redis.sock'}"
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, "" if embedded else url)
    port = free_port()
    serve = start_serve(config, tmp_path, "serve", port)
    traffic = Traffic([serve.target], seed=12)
    try:
        time.sleep(2.0)
        client = redis.Redis.from_url(url)
        before = versions(client)
        children = Path(f"/proc/{serve.process.pid}/task/{serve.process.pid}/children").read_text().split()
        serve.kill()
        if embedded:  # the embedded Redis dies with its owner (and keeps its append-only file)
            wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "Redis to die")
        serve = start_serve(config, tmp_path, "serve2", port)
        client = redis.Redis.from_url(url)
        time.sleep(2.0)
        ledger = finish(traffic, client)
        assert versions(client) > before
        check(tmp_path, ledger, client, unseen_allowed=len(traffic.threads))
        assert serve.terminate() == 0
    finally:
        traffic.stop.set()
        serve.terminate()
        if external:
            external.stop()


def test_sigterm_with_requests_in_flight(index_dir: Path, tmp_path: Path) -> None:
    url = f"unix://{tmp_path / 'redis' / 'redis.sock'}"
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path)
    port = free_port()
    serve = start_serve(config, tmp_path, "serve", port)
    traffic = Traffic([serve.target], seed=13, threads=8)
    try:
        time.sleep(2.0)
        assert serve.terminate() == 0, "SIGTERM drains and exits cleanly"
        # The decisions still inside their window were kept by the embedded Redis's append-only file.
        serve = start_serve(config, tmp_path, "serve2", port)
        client = redis.Redis.from_url(url)
        before = versions(client)
        time.sleep(1.5)
        ledger = finish(traffic, client)
        assert versions(client) > before
        check(tmp_path, ledger, client)
        assert serve.terminate() == 0
    finally:
        traffic.stop.set()
        serve.terminate()


def test_two_servers_with_background_loops_on_one_redis(index_dir: Path, tmp_path: Path, external_redis) -> None:
    url = external_redis[0].url
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, url)
    servers = [start_serve(config, tmp_path, f"serve{i}", free_port()) for i in range(2)]
    client = redis.Redis.from_url(url)
    traffic = Traffic([s.target for s in servers], seed=14)
    try:
        time.sleep(3.0)
        ledger = finish(traffic, client)
        figures = check(tmp_path, ledger, client)
        assert versions(client) > 0 and figures["files"] >= 2
        files = {p.name for p in (tmp_path / "logs").rglob("*.parquet")}
        assert len({name.split("-", 2)[-1] for name in files}) == 2, "both exporters wrote, under their own names"
    finally:
        traffic.stop.set()
        for s in servers:
            assert s.terminate() == 0


def test_separate_worker_processes_and_a_worker_killed(index_dir: Path, tmp_path: Path, external_redis) -> None:
    url = external_redis[0].url
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, url)
    serve = start_serve(config, tmp_path, "serve", free_port(), "--no-background")
    workers = [Proc(["worker", "--config", str(config)], tmp_path / f"worker{i}.log") for i in range(2)]
    for worker in workers:
        worker.wait_log("background joiner, learner, exporter started")
    client = redis.Redis.from_url(url)
    traffic = Traffic([serve.target], seed=15)
    try:
        for worker in workers:  # pools capped as the serving process's are (2 spinning OpenBLAS threads took cores)
            pools = re.search(r"native thread pools \(BLAS, OpenMP\): (.+); FAISS (\d+)", worker.log.read_text())
            assert pools is not None, worker.log.read_text()[-2000:]
            sizes = [int(pool.rsplit(" ", 1)[1]) for pool in pools.group(1).split(", ")] + [int(pools.group(2))]
            assert all(n == 1 for n in sizes), pools.group(0)
        time.sleep(2.0)
        before = versions(client)
        # Killed while its exporter holds entries read and not yet in a file, which the other worker must claim (a
        # worker killed right after a flush, 0.3 s here, left nothing to claim: on a busy box "claimed" never came)
        victim = workers[0].process.pid
        for _ in range(400):
            os.kill(victim, signal.SIGSTOP)
            if _pending_of(client, victim):
                break
            os.kill(victim, signal.SIGCONT)
            time.sleep(0.02)
        else:
            pytest.fail("the worker's exporter never held unexported entries")
        workers[0].kill()  # its buffered entries are claimed by the other worker, its lease taken over
        time.sleep(2.5)
        ledger = finish(traffic, client)
        assert versions(client) > before
        check(tmp_path, ledger, client)
        assert "claimed" in workers[1].log.read_text() or "claimed" in workers[0].log.read_text()
    finally:
        traffic.stop.set()
        serve.terminate()
        for worker in workers:
            worker.terminate()


def _pending_of(client: redis.Redis, pid: int) -> int:
    """Joined entries the exporter of process ``pid`` has read and not yet acknowledged (written to a file)."""
    consumers = client.xinfo_consumers(f"{PREFIX}:joined", "exporter")
    return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in _text(c["name"]))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_poison_values_reach_the_learner(index_dir: Path, tmp_path: Path, external_redis) -> None:
    url = external_redis[0].url
    config = write_config(tmp_path / "scout.toml", index_dir, tmp_path, url)
    serve = start_serve(config, tmp_path, "serve", free_port())
    client = redis.Redis.from_url(url)
    traffic = Traffic([serve.target], seed=16)
    try:
        time.sleep(1.5)
        before = versions(client)
        raw = None
        while raw is None:  # the joiner may take a decision between the two reads: take another
            pending = client.zrange(f"{PREFIX}:due", -1, -1)
            raw = client.hget(f"{PREFIX}:pending:{pending[0].decode()}", "decision") if pending else None
        template = json.loads(raw)
        poisons = [([1e200, 0.0], None), ([float("nan"), 1.0], None), ([0.0, 1.0], 1e308), ([0.0, 0.0], -1e9)]
        for k, (context, reward) in enumerate(poisons):
            decision = template | {"event_id": f"poison-{k}", "context_values": context}
            fields = {"event_id": f"poison-{k}", "joined_at": int(time.time() * 1000), "decision": json.dumps(decision)}
            if reward is not None:
                fields[f"r:{decision['item_ids'][0]}"] = repr(reward)
            fields["items"] = "\n" + "\n".join(decision["item_ids"]) + "\n"
            client.xadd(f"{PREFIX}:joined", fields)
        time.sleep(2.0)
        ledger = finish(traffic, client)
        assert versions(client) > before, "learning went on past the poison"
        for variant in VARIANTS:
            load_policy(client.hget(f"{PREFIX}:policy:home-ranking:{variant}", "state"))  # finite, loads
        assert int(client.hget(f"{PREFIX}:learner", "skipped")) == len(poisons)
        check(tmp_path, ledger, client, injected=len(poisons))
    finally:
        traffic.stop.set()
        assert serve.terminate() == 0
