"""A real Redis Cluster for tests: ``nodes`` redis-server processes in cluster mode, the slots split evenly."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from server.redis_server import redis_binary

SLOTS = 16384


def _free_cluster_port() -> int:
    """A port that is free along with its cluster bus port (port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextlib.contextmanager
def redis_cluster(directory: Path, nodes: int = 3) -> Iterator[list[int]]:
    """Start a cluster of ``nodes`` masters on localhost and yield their ports; stops them on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    ports = [_free_cluster_port() for _ in range(nodes)]
    procs = []
    try:
        for port in ports:
            node_dir = directory / str(port)
            node_dir.mkdir()
            log = (node_dir / "redis.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        redis_binary(),
                        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        clients = [redis.Redis(port=port, socket_timeout=5) for port in ports]
        for client in clients:
            _wait(lambda c=client: _pings(c), "a cluster node to start")
        per_node = SLOTS // nodes
        for k, client in enumerate(clients):
            end = SLOTS if k == nodes - 1 else (k + 1) * per_node
            client.execute_command("CLUSTER", "ADDSLOTS", *range(k * per_node, end))
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for client in clients:
            _wait(lambda c=client: _ready(c, nodes), "the cluster to agree on its slots")
        for client in clients:
            client.close()
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _ready(client: redis.Redis, nodes: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{nodes}" in text


def _wait(condition, what: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
