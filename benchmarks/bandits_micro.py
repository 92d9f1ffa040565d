"""Microbenchmark of the bandit hot paths on one core with one BLAS thread.

Ranking K candidates into a slate (features included) for every policy, the learner's batch path (features of
the served items plus the update, in joined decisions per second) and vectorized replay. Prints a table and saves
``benchmarks/results/bandits_micro.json``.

    .venv/bin/python benchmarks/bandits_micro.py [--candidates 200 --slate 10 --dims 32 64 --quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bandits.base import CandidateBatch, Candidates  # noqa: E402
from bandits.features import build_features, build_features_batch, feature_dim  # noqa: E402
from bandits.registry import create_policy  # noqa: E402

CONTEXT = 2
RESULTS = Path(__file__).parent / "results"

POLICY_CASES: dict[str, tuple[str, dict]] = {
    "linucb": ("linucb", {"alpha": 0.5, "floor": 0.05}),
    "linucb+arms": ("linucb", {"alpha": 0.5, "floor": 0.05, "arm_buckets": 65536}),
    "epsilon_greedy": ("epsilon_greedy", {"epsilon": 0.05}),
    "softmax": ("softmax", {"temperature": 0.05}),
    "thompson": ("thompson", {"scale": 0.3, "draws": 100}),
    "linucb+quota": ("linucb", {"alpha": 0.5, "floor": 0.05, "emerging_slots": 2, "emerging_weight": 0.05}),
}


def timeit(fn: Callable[[], object], min_time: float) -> float:
    """Best-of-5 seconds per call over repeated batches (the box is shared: the minimum is the least disturbed)."""
    fn()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time / 5 or runs < 3:
        fn()
        runs += 1
    per = (time.perf_counter() - start) / runs
    inner = max(1, int(min_time / 5 / per))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t) / inner)
    return float(np.min(samples))


def trained(name: str, params: dict, dim: int, rng: np.random.Generator) -> object:
    policy = create_policy(name, feature_dim(dim, CONTEXT), params)
    n, s = 2000, 5
    X = build_features_batch(rng.normal(size=(n, dim)), rng.normal(size=(n, s, dim)) / np.sqrt(dim), rng.random((n, 2)))
    ids = np.array([[f"item-{i}" for i in rng.integers(20000, size=s)] for _ in range(n)], dtype=object)
    batch = CandidateBatch(X, np.ones((n, s), bool), np.zeros((n, s), bool), ids, ids)
    policy.update_batch(batch, np.tile(np.arange(s), (n, 1)), (rng.random((n, s)) < 0.2).astype(float))
    return policy


def bench_rank(dim: int, k: int, slate: int, min_time: float, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    query = rng.normal(size=dim)
    items = rng.normal(size=(k, dim)) / np.sqrt(dim)
    context = np.array([1.0, 0.0])
    emerging = rng.random(k) < 0.06
    item_ids = np.array([f"item-{i:07d}" for i in rng.integers(20000, size=k)], dtype=object)
    creator_ids = np.array([f"creator-{i:05d}" for i in rng.integers(1000, size=k)], dtype=object)
    out: dict[str, dict[str, float]] = {}
    features_s = timeit(lambda: build_features(query, items, context), min_time)
    out["features"] = {"seconds": features_s}
    for label, (name, params) in POLICY_CASES.items():
        policy = trained(name, params, dim, rng)
        with_ids = "arm_buckets" in params
        gen = np.random.default_rng(0)

        def run(policy=policy, with_ids=with_ids, gen=gen) -> object:
            cands = Candidates.from_parts(
                query, items, context, emerging, item_ids if with_ids else None, creator_ids if with_ids else None
            )
            return policy.rank(cands, slate, gen)

        out[label] = {"seconds": timeit(run, min_time)}
    try:
        from bandits.vowpal import VowpalWabbit
    except ImportError:
        return out
    vw_cases = (
        ("vw_epsilon", {"exploration": "epsilon", "epsilon": 0.05}),
        ("vw_bag5", {"exploration": "bag", "bag": 5, "epsilon": 0.02}),
        ("vw_squarecb", {"exploration": "squarecb"}),
    )
    for label, params in vw_cases:
        vw = VowpalWabbit(feature_dim(dim, CONTEXT), **params)
        gen = np.random.default_rng(0)

        def run_vw(vw=vw, gen=gen) -> object:
            features = build_features(query, items, context)
            return vw.rank(Candidates(features, emerging), slate, gen)

        out[label] = {"seconds": timeit(run_vw, min_time)}
    return out


#: Timed calls of the learning and replay paths; the best counts (the first also fills caches, and the box is shared).
REPEATS = 3


def bench_learning(dim: int, decisions: int, slots: int, rng: np.random.Generator) -> dict[str, float]:
    """Joined decisions per second: features of the served items from logged vectors, then one batch update.

    Best of ``REPEATS`` calls, each on a fresh policy and the same data.
    """
    queries = rng.normal(size=(decisions, dim))
    served_vectors = rng.normal(size=(decisions, slots, dim)) / np.sqrt(dim)
    context = rng.random((decisions, CONTEXT))
    item_ids = np.array([f"item-{i:07d}" for i in rng.integers(20000, size=decisions * slots)], dtype=object)
    creator_ids = np.array([f"creator-{i:05d}" for i in rng.integers(1000, size=decisions * slots)], dtype=object)
    rewards = (rng.random(decisions * slots) < 0.2).astype(float)
    slot_numbers = np.tile(np.arange(slots), decisions)
    times = []
    for _ in range(REPEATS):
        policy = create_policy("linucb", feature_dim(dim, CONTEXT), {"alpha": 0.5, "arm_buckets": 65536})
        start = time.perf_counter()
        features = build_features_batch(queries, served_vectors, context).reshape(decisions * slots, -1)
        policy.learn(features, rewards, slot_numbers, item_ids, creator_ids)
        times.append(time.perf_counter() - start)
    elapsed = min(times)
    return {"decisions": decisions, "seconds": elapsed, "decisions_per_s": decisions / elapsed, "repeats": REPEATS}


def bench_replay(dim: int, decisions: int, k: int, slots: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    queries, items = rng.normal(size=(decisions, dim)), rng.normal(size=(decisions, k, dim)) / np.sqrt(dim)
    context, emerging = rng.random((decisions, 2)), rng.random((decisions, k)) < 0.06
    served = np.stack([rng.permutation(k)[:slots] for _ in range(decisions)])
    out = {}
    for label in ("linucb", "thompson"):
        name, params = POLICY_CASES[label]
        policy = trained(name, params, dim, rng)
        # From the parts, as replay builds it: LinUCB scores from them, Thompson builds the features (timed).
        batch = CandidateBatch.from_parts(queries, items, context, np.ones((decisions, k), bool), emerging)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            policy.replay_distributions(batch, served)  # type: ignore[attr-defined]
            times.append(time.perf_counter() - start)
        elapsed = min(times)
        out[label] = {
            "decisions": decisions,
            "seconds": elapsed,
            "decisions_per_s": decisions / elapsed,
            "repeats": REPEATS,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--quick", action="store_true", help="short timings (smoke run)")
    args = parser.parse_args()
    min_time = 0.1 if args.quick else args.min_time
    rng = np.random.default_rng(0)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "blas_threads": 1,
            "load_average": os.getloadavg(),
        },
        "candidates": args.candidates,
        "slate": args.slate,
        "rank": {},
        "learning": {},
        "replay": {},
    }
    for dim in args.dims:
        rank = bench_rank(dim, args.candidates, args.slate, min_time, rng)
        result["rank"][str(dim)] = rank
        print(f"d={dim}: rank {args.candidates} candidates into a slate of {args.slate} (features included)")
        for label, row in rank.items():
            print(f"  {label:<16} {row['seconds'] * 1e6:9.1f} us")
        learning = bench_learning(dim, 2000 if args.quick else 20000, 5, rng)
        result["learning"][str(dim)] = learning
        print(f"  learning (features + update, LinUCB + arms): {learning['decisions_per_s']:,.0f} decisions/s")
        replay = bench_replay(dim, 500 if args.quick else 5000, 30, 5, rng)
        result["replay"][str(dim)] = replay
        for label, row in replay.items():
            print(f"  replay_distributions {label}: {row['decisions_per_s']:,.0f} decisions/s (K=30, S=5)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bandits_micro.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
