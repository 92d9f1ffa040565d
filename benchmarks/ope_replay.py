"""Replay throughput: Scout-schema logs (30 candidates, slates of 5) replayed against a LinUCB target.

Builds a synthetic world and its index, writes N decision records in Scout's log schema (candidates drawn from the
index, slates sampled by an exploring epsilon-greedy logger with its exact propensities), then times reading the
Parquet file in batches and replaying every decision with a LinUCB target (`offline_eval.replay.replay_batches`,
`--threads` batches at once, BLAS at one thread per call), and the estimators on top.
Prints decisions/s for the first (cold) pass over the file and the median of the later (warm) passes.
Usage: `python benchmarks/ope_replay.py [--decisions 50000] [--threads 2] [--repeat 3]`.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bandits.emerging import EmergingRule  # noqa: E402
from bandits.epsilon_greedy import EpsilonGreedy  # noqa: E402
from bandits.features import build_features_batch, feature_dim  # noqa: E402
from bandits.linucb import LinUCB  # noqa: E402
from embeddings.builder import build_artifact  # noqa: E402
from embeddings.encoder import EncoderConfig  # noqa: E402
from embeddings.index import IndexArtifact  # noqa: E402
from offline_eval.evaluation import evaluate_data  # noqa: E402
from offline_eval.logs import records_to_table  # noqa: E402
from offline_eval.replay import concat, replay_batches  # noqa: E402
from offline_eval.world import SyntheticWorld, WorldConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_log(path: Path, n: int, seed: int = 0) -> tuple[IndexArtifact, LinUCB]:
    world = SyntheticWorld(WorldConfig(num_items=5000, num_creators=250, num_users=500, seed=seed))
    index = build_artifact(world.catalog, EncoderConfig(dim=32, seed=seed))
    rng = np.random.default_rng(seed)
    rule = EmergingRule().resolve(index.creator_ids, index.creator_popularity)
    dim = feature_dim(index.dim, 2)
    logger = EpsilonGreedy(dim, epsilon=0.3)
    target = LinUCB(dim, alpha=0.3)
    records = []
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        cands = np.stack([rng.choice(len(index), 30, replace=False) for _ in range(m)])
        seeds = rng.choice(len(index), size=(m, 5))
        context = (rng.random((m, 2)) < [0.6, 0.4]).astype(np.float64)
        queries = np.stack([index.query(s) for s in seeds])
        feats = build_features_batch(queries, index.vectors[cands], context)
        for i in range(m):
            from bandits.base import Candidates

            slate = logger.rank(Candidates(feats[i], np.zeros(30, dtype=bool)), 5, rng)
            served = cands[i, slate.indices]
            clicks = (rng.random(5) < 0.1).astype(float)
            if start == 0 and i < 2000:
                target.update(feats[i, slate.indices], clicks)
            records.append(
                {
                    "event_id": f"e{start + i}",
                    "decided_at": 0,
                    "joined_at": 0,
                    "unit_id": "u",
                    "surface": "home",
                    "experiment": "x",
                    "variant": "control",
                    "policy": logger.name,
                    "policy_version": "1",
                    "index_version": index.version,
                    "emerging_rule": json.dumps(rule.to_dict()),
                    "context_keys": ["mobile", "evening"],
                    "context_values": context[i].tolist(),
                    "seed_item_ids": index.item_ids[seeds[i]].tolist(),
                    "exclude_item_ids": [],
                    "candidate_ids": index.item_ids[cands[i]].tolist(),
                    "item_ids": index.item_ids[served].tolist(),
                    "creator_ids": index.creator_ids[served].tolist(),
                    "propensities": slate.propensities.tolist(),
                    "slate_probability": slate.probability,
                    "emerging": [False] * 5,
                    "rewards": clicks.tolist(),
                    "reward_observed": [True] * 5,
                    "default_reward": 0.0,
                }
            )
    pq.write_table(records_to_table(records), path)
    return index, target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="batches replayed at once")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the file; the first is cold (default 3)")
    args = parser.parse_args()
    path = Path(f"/tmp/scout_ope_replay_{args.decisions}.parquet")
    index_dir, target_file = path.with_suffix(".index"), path.with_suffix(".target.npz")
    if path.exists() and index_dir.exists() and target_file.exists():
        index, target = IndexArtifact.load(index_dir), LinUCB.from_bytes(target_file.read_bytes())
    else:
        t0 = time.perf_counter()
        index, target = make_log(path, args.decisions)
        index.save(index_dir)
        target_file.write_bytes(target.to_bytes())
        print(f"generated {args.decisions} decisions in {time.perf_counter() - t0:.1f} s")
    columns = ["index_version", "candidate_ids", "seed_item_ids", "item_ids", "propensities", "rewards"]
    columns += ["context_values", "emerging_rule"]

    def batches() -> Iterator[tuple[int, pa.RecordBatch]]:
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=args.batch_size, columns=columns):
            yield offset, batch
            offset += batch.num_rows

    passes = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        data = concat([r.data for r in replay_batches(batches(), index, target, args.threads)])
        passes.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    result = evaluate_data(data)
    estimate_s = time.perf_counter() - t0
    warm = float(np.median(passes[1:])) if len(passes) > 1 else passes[0]
    figures = {
        "decisions": args.decisions,
        "candidates": 30,
        "slots": 5,
        "target": "linucb",
        "read_and_replay_s (each pass; the first is cold: fresh memory, caches)": [round(p, 3) for p in passes],
        "decisions_per_s (cold)": round(args.decisions / passes[0]),
        "decisions_per_s (warm: median of the later passes)": round(args.decisions / warm),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "estimators_s (ips, snips, dr, normal intervals)": round(estimate_s, 3),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "estimates": {e.estimator: round(e.value, 4) for e in result.estimates},
    }
    print(json.dumps(figures, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ope_replay.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
