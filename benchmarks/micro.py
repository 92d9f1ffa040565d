"""Microbenchmarks of each stage of the loop, one thread, one BLAS thread (as ``scout serve`` runs them).

On one index artifact (``--index``; the target setup's 1M-item IVF-Flat index by default) and the target settings
(``benchmarks/configs/target.toml``: top-200 candidates, LinUCB, slates of 10):

- ``retrieval``: query vector from two seed items + top-K search;
- ``features_and_scoring``: the K-by-F features (with their parts) + LinUCB ranking K into a slate;
- ``decide``: the whole :meth:`Recommender.decide` (validation, assignment, the two above, the record);
- ``decision_logging``: :meth:`Store.record_decision` of those records to a real Redis (one Lua call each), one at a
  time and 16 in flight, and 16 in flight through the group commit the server uses (:mod:`server.writer`);
- ``reward_recording``: :meth:`Store.record_reward` for served items;
- ``learner``: joined decisions per CPU second (``benchmarks/learner_throughput.py``, run small);
- ``estimators``: IPS + SNIPS + DR rounds per second over a streamed Parquet log (``benchmarks/ope_scale.py``'s
  data, ``--rounds`` rounds).

Per-call figures are medians (and p99) of single calls in microseconds. Prints a table and saves
``benchmarks/results/micro.json``.

    .venv/bin/python benchmarks/micro.py [--index DIR] [--calls 2000] [--rounds 1000000] [--skip-learner]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bandits.base import Candidates  # noqa: E402
from embeddings.index import IndexArtifact  # noqa: E402
from server.app import limit_native_threads  # noqa: E402
from server.recommender import PolicyBook, Recommender, RecommendInput  # noqa: E402
from server.redis_server import RedisProcess  # noqa: E402
from server.settings import load_settings  # noqa: E402
from server.store import Store, redis_client  # noqa: E402
from server.writer import DecisionWriter  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def per_call(fn: Callable[[int], object], calls: int) -> dict[str, float]:
    """Median, p99 and mean of ``calls`` single calls ``fn(i)`` in microseconds (after 50 warm-up calls)."""
    for i in range(50):
        fn(i)
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - t
    us = out * 1e6
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean())}


async def redis_stages(records: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    """record_decision one at a time and 16 in flight, then record_reward, against a fresh embedded Redis."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process = RedisProcess(Path(tmp))
        store = Store(redis_client(process.url), "micro")
        try:
            await store.client.ping()

            async def log(i: int) -> None:
                record = dict(records[i % len(records)], event_id=f"e{i:08d}")
                await store.record_decision(record, 10**13, 0, 600)

            for i in range(50):
                await log(-1 - i)
            lat = np.empty(calls)
            cpu = time.process_time()
            for i in range(calls):
                t = time.perf_counter()
                await log(i)
                lat[i] = time.perf_counter() - t
            cpu = time.process_time() - cpu
            out["decision_logging"] = {
                "p50_us": float(np.median(lat) * 1e6),
                "p99_us": float(np.percentile(lat, 99) * 1e6),
                "client_cpu_us": cpu / calls * 1e6,
            }
            started, cpu = time.perf_counter(), time.process_time()

            async def caller(k: int) -> None:
                for i in range(calls + k, 2 * calls, 16):
                    await log(i)

            await asyncio.gather(*(caller(k) for k in range(16)))
            out["decision_logging_16_in_flight"] = {
                "per_s": calls / (time.perf_counter() - started),
                "client_cpu_us": (time.process_time() - cpu) / calls * 1e6,
            }
            # As the server writes them: 16 handlers' decisions through the group commit (server.writer).
            writer = DecisionWriter(store, 0, 600)
            started, cpu = time.perf_counter(), time.process_time()

            async def grouped(k: int) -> None:
                for i in range(2 * calls + k, 3 * calls, 16):
                    await writer.write(dict(records[i % len(records)], event_id=f"e{i:08d}"), 10**13)

            await asyncio.gather(*(grouped(k) for k in range(16)))
            out["decision_logging_16_group_commit"] = {
                "per_s": calls / (time.perf_counter() - started),
                "client_cpu_us": (time.process_time() - cpu) / calls * 1e6,
                "decisions_per_batch": writer.decisions / max(writer.batches, 1),
            }
            lat = np.empty(calls)
            for i in range(calls):
                record = records[i % len(records)]
                t = time.perf_counter()
                outcome = await store.record_reward(f"e{i:08d}", record["item_ids"][0], 1.0)
                lat[i] = time.perf_counter() - t
                if outcome not in (0, 1):
                    raise RuntimeError(f"record_reward e{i:08d}: unexpected outcome {outcome}")
            out["reward_recording"] = {
                "p50_us": float(np.median(lat) * 1e6),
                "p99_us": float(np.percentile(lat, 99) * 1e6),
            }
        finally:
            await store.client.aclose()
            process.stop()
    return out


def learner(args: argparse.Namespace) -> dict[str, Any]:
    """``benchmarks/learner_throughput.py`` at a small size; its decisions per CPU second."""
    label = "micro"
    subprocess.run(
        [sys.executable, str(HERE / "learner_throughput.py"), "--n", "5000", "--unique", "1000", "--label", label],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads((RESULTS / f"learner_throughput-{label}.json").read_text())
    (RESULTS / f"learner_throughput-{label}.json").unlink()
    return {k: result[k] for k in ("decisions", "decisions_per_s", "decisions_per_cpu_s", "embedding_dim", "batch")}


def estimators(rounds: int) -> dict[str, Any]:
    """IPS + SNIPS + DR (normal intervals) over ``rounds`` logged rounds streamed from Parquet."""
    spec = importlib.util.spec_from_file_location("ope_scale", HERE / "ope_scale.py")
    assert spec is not None and spec.loader is not None
    ope_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ope_scale)
    from offline_eval.estimators import create_estimators
    from offline_eval.streaming import evaluate_external

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rounds.parquet"
        ope_scale.generate(path, rounds)
        started, cpu = time.perf_counter(), time.process_time()
        evaluate_external(path, create_estimators(["ips", "snips", "dr"]), 1 << 20, 0)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"rounds": rounds, "seconds": seconds, "rounds_per_s": rounds / seconds, "rounds_per_cpu_s": rounds / cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=Path("/work/bench1m/ivf"), help="index artifact directory")
    parser.add_argument("--config", type=Path, default=HERE / "configs" / "target.toml")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1_000_000, help="logged rounds for the estimators")
    parser.add_argument("--skip-learner", action="store_true")
    parser.add_argument("--skip-estimators", action="store_true")
    args = parser.parse_args()
    limit_native_threads()

    settings = load_settings(args.config, environ={"SCOUT_INDEX": str(args.index)})
    experiment = settings.experiments[0]
    load_started = time.perf_counter()
    index = IndexArtifact.load(args.index)
    load_s = time.perf_counter() - load_started
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim))
    policy = recommender.policies.get(experiment.name, experiment.variants[0].name)
    rng = np.random.default_rng(0)
    n = len(index)
    seeds = [index.item_ids[rng.integers(n, size=2)].tolist() for _ in range(512)]
    requests = [
        RecommendInput(f"user-{i}", experiment.surfaces[0], 10, {"mobile": float(i % 2), "evening": 0.3}, tuple(s))
        for i, s in enumerate(seeds)
    ]
    k = experiment.candidates
    queries = [index.query(index.positions(s)) for s in seeds]
    found = [index.search(q, k).positions for q in queries[:64]]
    context = np.array([1.0, 0.3])
    emerging = np.zeros(k, dtype=bool)

    def retrieval(i: int) -> None:
        s = seeds[i % len(seeds)]
        index.search(index.query(index.positions(s)), k)

    def scoring(i: int) -> None:
        positions = found[i % len(found)]
        candidates = Candidates.from_parts(
            queries[i % len(found)],
            index.vectors[positions],
            context,
            emerging[: len(positions)],
            index.item_ids[positions],
            index.creator_ids[positions],
        )
        policy.rank(candidates, 10, np.random.default_rng(i))

    records: list[dict[str, Any]] = []

    def decide(i: int) -> None:
        decision = recommender.decide(requests[i % len(requests)])
        if len(records) < 256:
            records.append(decision.record)

    stages: dict[str, Any] = {
        "retrieval": per_call(retrieval, args.calls),
        "features_and_scoring": per_call(scoring, args.calls),
        "decide": per_call(decide, args.calls),
    }
    stages |= asyncio.run(redis_stages(records, args.calls))
    if not args.skip_learner:
        stages["learner"] = learner(args)
    if not args.skip_estimators:
        stages["estimators"] = estimators(args.rounds)
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "python": platform.python_version()},
        "setup": {
            "index": str(args.index),
            "index_type": index.manifest.get("index_type"),
            "search_params": index.search_params,
            "items": n,
            "dim": index.dim,
            "candidates": k,
            "policy": policy.name,
            "slate": 10,
            "index_load_s": load_s,
        },
        "stages": stages,
    }
    for name, figures in stages.items():
        text = "  ".join(f"{key} {value:,.1f}" for key, value in figures.items() if isinstance(value, float))
        print(f"{name:<34}{text}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "micro.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
