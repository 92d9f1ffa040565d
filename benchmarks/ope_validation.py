"""Bias, RMSE and 95% interval coverage of every estimator against an exact truth, across many seeds.

The world: slates of 1-3 slots (length varies by request), 5 items per slot, a logging and a target policy that
choose each slot independently (softmax of per-slot scores; the target's scores are the logger's plus Gaussian
noise of scale `closeness`: 0.5 is a near target, 1.5 a distant one), clicks with position bias. The truth
``sum_k P(L > k) sum_a pi_k(a) q_k(a)`` is exact. Reward-model features are one-hots of (slot, item), so DM/DR
are well specified. Each seed draws a new log of `--decisions` decisions; intervals are normal (delta method).

Usage: `python benchmarks/ope_validation.py [--seeds 200 --decisions 3000]`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "offline_eval"))
from factorized_slates import sample, slate_world

from offline_eval.estimators import ESTIMATORS, create_estimators
from offline_eval.evaluation import evaluate_data

RESULTS = Path(__file__).parent / "results"


def validate(closeness: float, seeds: int, decisions: int, bootstrap: int = 0) -> dict[str, dict[str, float]]:
    world = slate_world(seed=3, closeness=closeness)
    values: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    covered: dict[str, list[bool]] = {name: [] for name in ESTIMATORS}
    for seed in range(seeds):
        result = evaluate_data(
            sample(world, decisions, seed=1000 + seed), create_estimators(["all"]), bootstrap, seed=seed
        )
        for e in result.estimates:
            values[e.estimator].append(e.value)
            covered[e.estimator].append(e.lower <= world.truth <= e.upper)
    out = {}
    for name in ESTIMATORS:
        v = np.array(values[name])
        out[name] = {
            "bias": float(v.mean() - world.truth),
            "rmse": float(np.sqrt(((v - world.truth) ** 2).mean())),
            "coverage": float(np.mean(covered[name])),
        }
    out["_truth"] = {"value": world.truth}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--decisions", type=int, default=3000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    figures: dict[str, object] = {"seeds": args.seeds, "decisions": args.decisions, "interval": "normal (delta method)"}
    for label, closeness in (("near", 0.5), ("distant", 1.5)):
        figures[label] = validate(closeness, args.seeds, args.decisions)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["cores"] = os.cpu_count()
    figures["load_average"] = os.getloadavg()
    lines = [
        "| estimator | near: bias | RMSE | coverage | distant: bias | RMSE | coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ESTIMATORS:
        n, d = figures["near"][name], figures["distant"][name]  # type: ignore[index]
        lines.append(
            f"| {name} | {n['bias']:+.4f} | {n['rmse']:.4f} | {n['coverage']:.1%} | "
            f"{d['bias']:+.4f} | {d['rmse']:.4f} | {d['coverage']:.1%} |"
        )
    table = "\n".join(lines)
    print(table)
    print(json.dumps({k: figures[k] for k in ("seeds", "decisions", "seconds", "cores", "load_average")}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ope_validation.json").write_text(json.dumps(figures, indent=2))
    (RESULTS / "ope_validation.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
