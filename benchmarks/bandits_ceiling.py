"""Full-information ceiling of the linear reward model: how much of the oracle can these features reach at all?

The stream of `bandits_regret.py` (same world, index, queries and candidates), but no bandit: the policies'
linear model (Scout's features plus per-creator and per-item terms) is fitted to the true click probability of
every candidate of the first `--train` decisions (ridge, backfitted with the per-arm means), then ranks the next
`--test` decisions greedily. Its share of the oracle bounds what any policy learning that model from clicks can
earn; the gap between it and a bandit's share is the cost of learning from clicks, the gap to 100% is the model's.
Saves ``benchmarks/results/bandits_ceiling_<preset>.json``.

    .venv/bin/python benchmarks/bandits_ceiling.py --preset foundation [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bandits_regret import RESULTS, make_stream  # noqa: E402

from bandits.features import build_features_batch  # noqa: E402
from embeddings.builder import build_artifact  # noqa: E402
from embeddings.encoder import EncoderConfig  # noqa: E402
from offline_eval.world import SyntheticWorld, item_index, position_bias, world_preset  # noqa: E402


def fit(X: np.ndarray, y: np.ndarray, arms: list[np.ndarray], l2: float = 1.0, rounds: int = 8) -> tuple:
    """Ridge on m-by-F ``X`` plus per-arm terms (one id array per arm kind), by backfitting."""
    A = X.T @ X + l2 * np.eye(X.shape[1])
    terms = [np.zeros(int(ids.max()) + 1) for ids in arms]
    theta = np.zeros(X.shape[1])
    for _ in range(rounds if arms else 1):
        theta = np.linalg.solve(A, X.T @ (y - sum((t[ids] for t, ids in zip(terms, arms, strict=True)), 0.0)))
        for j, ids in enumerate(arms):
            others = sum((t[i] for k, (t, i) in enumerate(zip(terms, arms, strict=True)) if k != j), 0.0)
            residual = y - X @ theta - others
            terms[j] = np.bincount(ids, residual, len(terms[j])) / (np.bincount(ids, None, len(terms[j])) + l2)
    return theta, terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="foundation", choices=["foundation", "tradeoff"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=20000, help="decisions fitted with full information")
    parser.add_argument("--test", type=int, default=10000, help="decisions ranked greedily after them")
    parser.add_argument("--slate", type=int, default=5)
    args = parser.parse_args()
    world = SyntheticWorld(world_preset(args.preset, num_items=20000, seed=args.seed))
    index = build_artifact(world.catalog, EncoderConfig(dim=32, seed=0, device="cpu"))
    stream = make_stream(world, index, args.train + args.test, 30, args.seed + 1)
    X = build_features_batch(stream.queries, index.vectors.astype(np.float64)[stream.positions], stream.context)
    items = item_index(index.item_ids.tolist())[stream.positions]
    creators = world.item_creator[items]
    train, test = slice(0, args.train), slice(args.train, None)
    bias = position_bias(args.slate)

    def value(scores: np.ndarray) -> float:
        top = np.argsort(-scores, axis=1)[:, : args.slate]
        return float((np.take_along_axis(stream.truth[test], top, axis=1) * bias).sum(axis=1).mean())

    oracle = value(stream.truth[test])
    rows = {}
    for label, kinds in (
        ("features only", []),
        ("+ creator terms", [creators]),
        ("+ creator and item terms", [creators, items]),
    ):
        theta, terms = fit(
            X[train].reshape(-1, X.shape[2]), stream.truth[train].ravel(), [k[train].ravel() for k in kinds]
        )
        scores = X[test] @ theta + sum((t[k[test]] for t, k in zip(terms, kinds, strict=True)), 0.0)
        rows[label] = {"per_decision": value(scores), "share": value(scores) / oracle}
        print(f"{label:<28}{rows[label]['per_decision']:>8.3f} / {oracle:.3f} = {100 * rows[label]['share']:5.1f}%")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bandits_ceiling_{args.preset}{'' if args.seed == 0 else f'_seed{args.seed}'}.json"
    path.write_text(json.dumps({"args": vars(args), "oracle_per_decision": oracle, "models": rows}, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
