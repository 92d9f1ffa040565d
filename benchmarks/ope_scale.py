"""10M logged rounds in the external layout (target probabilities given), streamed from Parquet.

Generates the file once under /tmp (in a child process, so its memory does not count), then times IPS, SNIPS and
DR with normal (delta-method) intervals, and again with 200 Poisson bootstrap replicates, and reports the peak
resident memory of the evaluating process. The data: 10 actions, 5 context features, a logging policy and a target
policy that are softmaxes of different linear scores, clicks whose probability depends on context and action, so
the true value of the target is known exactly (the mean of its expected reward over the contexts drawn).

Usage: `python benchmarks/ope_scale.py [--rounds 10000000 --batch-size 1048576]`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results"
ACTIONS, FEATURES = 10, 5


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def generate(path: Path, rounds: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    w_log, w_tgt, w_rew = (rng.normal(size=(FEATURES, ACTIONS)) for _ in range(3))
    truth = 0.0
    tmp = path.with_suffix(".partial")
    with pq.ParquetWriter(tmp, schema=_schema()) as writer:
        for start in range(0, rounds, 1 << 20):
            m = min(1 << 20, rounds - start)
            x = rng.normal(size=(m, FEATURES))
            mu, pi = softmax(0.5 * x @ w_log), softmax(0.5 * x @ w_log + 0.4 * x @ w_tgt)
            click = 1.0 / (1.0 + np.exp(-(x @ w_rew) * 0.5 + 1.5))
            truth += float((pi * click).sum())
            a = (rng.random((m, 1)) > np.cumsum(mu, axis=1)).sum(axis=1).clip(0, ACTIONS - 1)
            rows = np.arange(m)
            reward = (rng.random(m) < click[rows, a]).astype(np.float64)
            columns = {"action": a.astype(np.int64), "reward": reward, "propensity": mu[rows, a]}
            columns |= {"target_propensity": pi[rows, a]} | {f"x_{j}": x[:, j] for j in range(FEATURES)}
            writer.write_table(pa.table(columns, schema=_schema()))
    tmp.rename(path)
    return truth / rounds


def _schema() -> pa.Schema:
    fields = [("action", pa.int64()), ("reward", pa.float64()), ("propensity", pa.float64())]
    fields += [("target_propensity", pa.float64())] + [(f"x_{j}", pa.float64()) for j in range(FEATURES)]
    return pa.schema(fields)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=1 << 20)
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    path = Path(f"/tmp/scout_ope_scale_{args.rounds}.parquet")
    truth_file = path.with_suffix(".truth.json")
    if args.generate_only:
        truth = generate(path, args.rounds)
        truth_file.write_text(json.dumps({"truth": truth}))
        return
    if not path.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--generate-only"], check=True)
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s")
    truth = json.loads(truth_file.read_text())["truth"]

    from offline_eval.estimators import create_estimators
    from offline_eval.streaming import evaluate_external

    figures: dict[str, object] = {"rounds": args.rounds, "batch_size": args.batch_size, "truth": round(truth, 5)}
    figures["file_mb"] = round(path.stat().st_size / 1e6)
    figures["load_average_before"] = os.getloadavg()
    for label, bootstrap in (("analytic", 0), ("bootstrap_200", 200)):
        t0 = time.perf_counter()
        result = evaluate_external(path, create_estimators(["ips", "snips", "dr"]), args.batch_size, bootstrap)
        seconds = time.perf_counter() - t0
        figures[f"{label}_s"] = round(seconds, 2)
        figures[f"{label}_estimates"] = {
            e.estimator: [round(e.value, 5), round(e.lower, 5), round(e.upper, 5)] for e in result.estimates
        }
        print(f"{label}: {seconds:.1f} s")
        for e in result.estimates:
            print(f"  {e.estimator:<6} {e.value:.5f} [{e.lower:.5f}, {e.upper:.5f}] ({e.interval})")
    figures["truth_inside"] = {
        k: all(lo <= truth <= hi for _, lo, hi in [v])
        for k, v in figures["analytic_estimates"].items()  # type: ignore[union-attr]
    }
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["cores"] = os.cpu_count()
    figures["load_average_after"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ope_scale.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
