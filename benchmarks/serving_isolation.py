"""Does heavy work stall the server? Health-check latency under concurrent heavy Recommend calls, and sequential
Recommend latency with the background loops in-process vs ``--no-background``.

Starts ``python -m server.cli serve`` from ``--repo`` (this checkout by default; point it at a checkout of an
older commit to compare), on an embedded Redis, with an experiment of ``--candidates`` candidates:

1. health-check latency (sequential ``Check`` calls) while idle;
2. the same while ``--concurrency`` client threads send heavy Recommend calls (50-item slates);
3. p50/p99 of sequential Recommend calls with the joiner/learner/exporter in-process, then with
   ``--no-background``.

Prints the figures and saves ``benchmarks/results/serving_isolation[-LABEL].json``.

    .venv/bin/python benchmarks/serving_isolation.py [--repo DIR --label NAME --candidates 1000 --concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.pb import scout_pb2, scout_pb2_grpc

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve().parents[1]


def config(root: Path, index: Path, port: int, candidates: int) -> Path:
    path = root / "scout.toml"
    path.write_text(
        f'index = "{index}"\ndata_dir = "{root / "redis"}"\n'
        f"[server]\nport = {port}\nmax_num_items = 50\n"
        "[join]\nreward_window_s = 1.0\n"
        f'[export]\nlog_dir = "{root / "logs"}"\n'
        f'[[experiments]]\nname = "home-ranking"\nsalt = "s"\nsurfaces = ["home"]\ncontext_keys = ["mobile"]\n'
        f"candidates = {candidates}\n"
        '[[experiments.variants]]\nname = "control"\nweight = 1.0\npolicy = "epsilon_greedy"\n'
        "params = { epsilon = 0.3 }\n"
    )
    return path


def serve(repo: Path, cfg: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "serve", "--config", str(cfg), *extra],
        cwd=repo,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return process
            except grpc.RpcError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)


def health_latency(target: str, n: int) -> list[float]:
    out = []
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(n):
            start = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            out.append((time.perf_counter() - start) * 1000)
            time.sleep(0.005)
    return out


def heavy_load(target: str, threads: int, stop: threading.Event, counter: list[int]) -> list[threading.Thread]:
    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            while not stop.is_set():
                seeds = [f"item-{int(i):07d}" for i in rng.integers(1, 3000, 50)]
                request = scout_pb2.RecommendRequest(
                    unit_id=f"u{seed}", surface="home", num_items=50, seed_item_ids=seeds, context={"mobile": 1.0}
                )
                try:
                    stub.Recommend(request, timeout=30)
                    counter[0] += 1
                except grpc.RpcError:
                    pass

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    return workers


def sequential(target: str, n: int) -> list[float]:
    out = []
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(target) as channel:
        stub = scout_pb2_grpc.RecommenderStub(channel)
        for k in range(n):
            request = scout_pb2.RecommendRequest(
                unit_id=f"s{k}", surface="home", num_items=10, seed_item_ids=[f"item-{int(rng.integers(1, 3000)):07d}"]
            )
            start = time.perf_counter()
            stub.Recommend(request, timeout=30)
            out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose server to run (default: this one)")
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--checks", type=int, default=200, help="health checks per phase")
    parser.add_argument("--sequential", type=int, default=300, help="sequential Recommend calls per mode")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="scout-iso-"))
    try:
        subprocess.run([sys.executable, "-m", "server.cli", "--log-level", "WARNING", "world", "--out",
                        str(root / "c.parquet"), "--items", "3000"], check=True, cwd=HERE)  # fmt: skip
        subprocess.run([sys.executable, "-m", "server.cli", "--log-level", "WARNING", "build", "--catalog",
                        str(root / "c.parquet"), "--out", str(root / "index"), "--dim", "32"],
                       check=True, cwd=HERE, stdout=subprocess.DEVNULL)  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = config(root, root / "index", port, args.candidates)
        target = f"127.0.0.1:{port}"
        results: dict[str, object] = {
            "machine": f"{os.cpu_count()} cores, {platform.machine()}",
            "repo": str(args.repo),
        }

        process = serve(args.repo, cfg, port, root / "serve.log")
        results["health_idle"] = summary(health_latency(target, args.checks))
        stop, counter = threading.Event(), [0]
        workers = heavy_load(target, args.concurrency, stop, counter)
        time.sleep(2.0)
        start, before = time.monotonic(), counter[0]
        results["health_under_heavy_load"] = summary(health_latency(target, args.checks))
        results["heavy_recommend_per_s"] = (counter[0] - before) / (time.monotonic() - start)
        stop.set()
        for w in workers:
            w.join()
        time.sleep(1.5)
        results["sequential_with_background"] = summary(sequential(target, args.sequential))
        process.terminate()
        process.wait(timeout=60)

        process = serve(args.repo, cfg, port, root / "serve2.log", "--no-background")
        results["sequential_no_background"] = summary(sequential(target, args.sequential))
        process.terminate()
        process.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    name = f"serving_isolation{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
