"""Cold- and warm-item recall of held-out co-engagements: the trained content tower against untrained encoders.

On the default synthetic world (20k items, 2,000 users), 20% of the items are cold (in no training pair) and 20%
of the users are test users: each test user's query is the normalized mean of 5 warm items it engaged with, and
recall@K is the share of its other engaged items (cold ones, warm ones) in the top K. Encoders compared:

- ``hashed``: the untrained content encoder (hashed text, tags, descriptors; seeded random projection, d=32);
- ``minilm``: the same with all-MiniLM-L6-v2 text vectors (d=32);
- ``minilm-text``: raw all-MiniLM-L6-v2 vectors of the item text alone (384 dims);
- ``tower``: the content tower trained with in-batch InfoNCE on the training users' co-engagement pairs (d=32).

Also times each encoder (items per second, CPU). Saves ``results/tower_recall.json``.

Usage: ``python benchmarks/tower_recall.py [--epochs 8 --seed 0]``.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.evaluation import co_engagement_recall
from embeddings.text import HashedTextEncoder, make_text_encoder
from embeddings.tower import ContentTower, TowerConfig
from offline_eval.engagement import cold_start_split
from offline_eval.world import SyntheticWorld, WorldConfig

RESULTS = Path(__file__).parent / "results"
KS = (10, 50)


def recalls(vectors: np.ndarray, split) -> dict[str, float]:  # type: ignore[no-untyped-def]
    out = {}
    for k in KS:
        out[f"cold@{k}"] = round(co_engagement_recall(vectors, split.seeds, split.cold_targets, k)[0], 4)
        out[f"warm@{k}"] = round(co_engagement_recall(vectors, split.seeds, split.warm_targets, k)[0], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "tower_recall.json", help="where the JSON goes")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    world = SyntheticWorld(WorldConfig(seed=args.seed))
    split = cold_start_split(world, seed=args.seed)
    n = len(world.catalog)
    print(f"world and split: {time.perf_counter() - t0:.1f} s; {len(split.train_pairs)} training pairs, "
          f"{int(split.cold.sum())} cold items, {len(split.seeds)} test users")  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    throughput: dict[str, float] = {}
    for name in ("hashed", "minilm"):
        encoder = ContentEncoder.for_catalog(world.catalog, EncoderConfig(dim=32, device="cpu", text_encoder=name))
        t = time.perf_counter()
        vectors = encoder.encode(world.catalog)
        throughput[name] = round(n / (time.perf_counter() - t))
        rows[name] = recalls(vectors, split)
        print(name, rows[name], f"{throughput[name]} items/s")
    minilm = make_text_encoder("minilm", 0, device="cpu")
    t = time.perf_counter()
    text_vectors = minilm.encode_texts(list(world.catalog.texts))
    throughput["minilm-text"] = round(n / (time.perf_counter() - t))
    rows["minilm-text"] = recalls(np.asarray(text_vectors), split)
    print("minilm-text", rows["minilm-text"], f"{throughput['minilm-text']} items/s")
    config = TowerConfig(dim=32, epochs=args.epochs, device="cpu", seed=args.seed)
    tower, features = ContentTower.for_catalog(world.catalog, config, HashedTextEncoder(256))
    t = time.perf_counter()
    report = tower.fit(features, split.train_pairs)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    vectors = tower.encode_features(features)
    throughput["tower"] = round(n / (time.perf_counter() - t))
    rows["tower"] = recalls(vectors, split)
    print("tower", rows["tower"], f"{throughput['tower']} items/s; trained in {train_s:.0f} s", report.losses[-3:])
    best_untrained = max(rows[k]["cold@50"] for k in ("hashed", "minilm", "minilm-text"))
    ratio = rows["tower"]["cold@50"] / best_untrained if best_untrained else float("inf")
    figures = {
        "world": {"items": n, "users": world.config.num_users, "seed": args.seed},
        "training_pairs": len(split.train_pairs),
        "cold_items": int(split.cold.sum()),
        "test_users": len(split.seeds),
        "tower": {"epochs": args.epochs, "train_s": round(train_s, 1), "losses": [round(x, 4) for x in report.losses]},
        "recall": rows,
        "encode_items_per_s": throughput,
        "cold50_tower_over_best_untrained": round(ratio, 3),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(f"cold recall@50: tower / best untrained = {ratio:.2f} (target >= 1.5)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
