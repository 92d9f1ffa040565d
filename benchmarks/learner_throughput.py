"""How many joined decisions per second one learner process applies (one core, one BLAS thread).

Builds a synthetic world and its index, makes ``--unique`` decisions with the configured experiments (the default
settings: an epsilon-greedy and a LinUCB variant), writes ``--n`` joined entries (the unique decisions repeated
under fresh event ids, with rewards) to the joined stream of a real embedded Redis
(:class:`server.redis_server.RedisProcess`), then times :meth:`server.learner.Learner.step` until every entry is
applied and published. Prints decisions/s (wall clock, and per CPU second of the learner process: on a shared
machine the CPU figure is the one-core rate) and saves ``benchmarks/results/learner_throughput[-LABEL].json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learner_throughput.py [--n 20000 --batch 500 --label before]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from embeddings.builder import build_artifact  # noqa: E402
from embeddings.encoder import EncoderConfig  # noqa: E402
from offline_eval.world import SyntheticWorld, WorldConfig  # noqa: E402
from server.learner import Learner  # noqa: E402
from server.recommender import PolicyBook, Recommender, RecommendInput  # noqa: E402
from server.redis_server import RedisProcess  # noqa: E402
from server.settings import load_settings  # noqa: E402
from server.store import Store  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="joined entries to apply")
    parser.add_argument("--unique", type=int, default=2000, help="distinct decisions (repeated to --n)")
    parser.add_argument("--items", type=int, default=5000, help="catalog size")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension")
    parser.add_argument("--batch", type=int, default=500, help="learner batch (entries per step)")
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before, after)")
    args = parser.parse_args()

    world = SyntheticWorld(WorldConfig(num_items=args.items, num_creators=200, num_users=500, seed=1))
    index = build_artifact(world.catalog, EncoderConfig(dim=args.dim, seed=1))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        process = RedisProcess(Path(tmp) / "redis")
        try:
            base = load_settings(environ={})
            settings = replace(
                base, redis_url=process.url, index=Path(tmp), learner=replace(base.learner, batch=args.batch)
            )
            recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=0)
            decisions = []
            for k in range(args.unique):
                seeds = tuple(f"item-{int(i):07d}" for i in rng.integers(1, args.items, size=1 + k % 3))
                decisions.append(
                    recommender.decide(
                        RecommendInput(
                            unit_id=f"u{k}",
                            surface="home",
                            num_items=1 + k % 8,
                            context={"mobile": float(k % 2)},
                            seed_item_ids=seeds,
                        )
                    ).record
                )
            write(process.url, decisions, args.n, rng)
            seconds, cpu, learner = asyncio.run(learn(process.url, settings, index, args.n))
        finally:
            process.stop()
    rate, cpu_rate = args.n / seconds, args.n / cpu
    slots = sum(len(d["item_ids"]) for d in decisions) / len(decisions)
    print(f"applied {learner.applied} joined decisions ({slots:.1f} served items each) in {seconds:.2f} s")
    print(f"learner throughput: {rate:,.0f} decisions/s wall clock (batch {args.batch}, one BLAS thread)")
    print(f"per core: {cpu_rate:,.0f} decisions per CPU second of the learner process ({cpu:.2f} CPU s)")
    print(f"redis reply parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "decisions": args.n,
        "unique_decisions": args.unique,
        "mean_served_items": slots,
        "catalog_items": args.items,
        "embedding_dim": args.dim,
        "batch": args.batch,
        "seconds": seconds,
        "decisions_per_s": rate,
        "cpu_seconds": cpu,
        "decisions_per_cpu_s": cpu_rate,
        "hiredis": HIREDIS_AVAILABLE,
        "applied": learner.applied,
        "skipped": learner.skipped,
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, busy)",
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"learner_throughput{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


def write(url: str, decisions: list[dict], n: int, rng: np.random.Generator) -> None:
    """Write ``n`` joined entries (the shape the joiner writes) to the joined stream."""
    client = redis.Redis.from_url(url)
    stream = Store(aioredis.Redis.from_url(url)).joined_keys[0]
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for k in range(n):
        record = dict(decisions[k % len(decisions)], event_id=f"e{k}")
        items = record["item_ids"]
        fields = {"event_id": record["event_id"], "joined_at": now, "decision": json.dumps(record)}
        fields["items"] = "\n" + "\n".join(items) + "\n"
        fields |= {f"r:{item}": float(rng.random() < 0.3) for item in items}
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        if k % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


async def learn(url: str, settings, index, n: int) -> tuple[float, float, Learner]:  # type: ignore[no-untyped-def]
    store = Store(aioredis.Redis.from_url(url))
    learner = Learner(store, lambda: PolicyBook(settings, index.dim), index, settings.learner, "bench", settings.limits)
    start, cpu = time.perf_counter(), time.process_time()
    while learner.applied + learner.skipped < n:
        await learner.step()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    learner.close()
    await store.client.aclose()
    return seconds, cpu, learner


if __name__ == "__main__":
    main()
