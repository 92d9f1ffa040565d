"""How often the demo's offline estimates hold the synthetic world's true value, over seeds.

Runs the whole demo (``scout demo``: world, index, server with embedded Redis, 20,000 simulated requests, offline
evaluation of the control variant's half-time model, greedier, on the decisions logged after it) once per seed and
records each estimator's estimate, interval, flags and whether it covers the truth, plus the per-slot
effective sample sizes and the largest importance weight.

Usage: ``python benchmarks/demo_coverage.py [--seeds 10 --first-seed 0]``; about 80 s per seed on 2 cores.
Writes ``results/demo_coverage.json``.
"""

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from server.demo import DemoConfig, demo, quiet_logs

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "demo_coverage.json",
        help="results file (default results/demo_coverage.json)",
    )
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, quiet_logs():
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            outcome = asyncio.run(demo(DemoConfig(Path(tmp) / str(seed), seed=seed)))
            if outcome is None:
                raise SystemExit(f"seed {seed}: the demo had nothing to evaluate")
            diagnostics = outcome.evaluation.diagnostics
            runs.append(
                {
                    "seed": seed,
                    "truth": outcome.truth,
                    "logged_value": outcome.logged_value,
                    "target_version": outcome.target_version,
                    "decisions": outcome.evaluation.estimates[0].n,
                    "ess_per_slot": list(diagnostics.ess_per_slot),
                    "max_weight": diagnostics.max_weight,
                    "seconds": outcome.seconds,
                    "estimates": {
                        e.estimator: {
                            "value": e.value,
                            "interval": [e.lower, e.upper],
                            "covers": e.lower <= outcome.truth <= e.upper,
                            "flags": list(e.flags),
                        }
                        for e in outcome.evaluation.estimates
                    },
                }
            )
    names = list(runs[0]["estimates"])
    coverage = {n: sum(r["estimates"][n]["covers"] for r in runs) for n in names}
    flagged = {n: sum(bool(r["estimates"][n]["flags"]) for r in runs) for n in names}
    figures = {
        "seeds": [r["seed"] for r in runs],
        "covered": coverage,
        "flagged": flagged,
        "runs": runs,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{len(runs)} seeds; intervals holding the truth: " + ", ".join(f"{n} {c}" for n, c in coverage.items()))
    print("flagged: " + ", ".join(f"{n} {c}" for n, c in flagged.items()) + f"; wrote {args.out}")


if __name__ == "__main__":
    main()
