"""Real public data through the external-log reader: the Open Bandit Dataset (Saito et al., 2021).

OBD logs the same fashion e-commerce traffic under two policies, uniform random and Bernoulli Thompson sampling
(BTS), each row one impression of one item at one of three positions (1-based), with a click and the logging
policy's propensity. The random policy's value is known on-policy (the mean click of its own log), so estimating it
from the BTS log is a check against real data: its probability of any item at any position is its logged
propensity (1/80 for the ``all`` campaign). Each row becomes its own round, with the position as a context column
(``x_position``) for DR's reward model, as OBD's own tools treat it.

Usage: ``python benchmarks/obd_check.py --obd DIR`` where ``DIR`` holds ``bts/all/all.csv`` and
``random/all/all.csv``: the full dataset from https://research.zozo.com/data.html, or the 10,000-row sample in the
``obp`` wheel (``pip download --no-deps obp``, unzip, ``obp/dataset/obd``). Writes ``results/obd_check.json``.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from offline_eval.estimators import create_estimators
from offline_eval.streaming import evaluate_external

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["item_id", "position", "click", "propensity_score"]
SCHEMA = pa.schema(
    [
        ("action", pa.int64()),
        ("reward", pa.float64()),
        ("propensity", pa.float64()),
        ("target_propensity", pa.float64()),
        ("x_position", pa.float64()),
    ]
)


def convert(source: Path, out: Path, target_propensity: float) -> tuple[int, float]:
    """Write ``source`` (an OBD CSV) in the external layout, streaming; returns its rows and mean click."""
    rows, clicks = 0, 0.0
    convert_options = pcsv.ConvertOptions(include_columns=COLUMNS)
    with pcsv.open_csv(source, convert_options=convert_options) as reader, pq.ParquetWriter(out, SCHEMA) as writer:
        for batch in reader:
            click = batch.column("click").to_numpy().astype(np.float64)
            position = batch.column("position").to_numpy().astype(np.float64)
            table = pa.table(
                {
                    "action": batch.column("item_id"),
                    "reward": click,
                    "propensity": batch.column("propensity_score").to_numpy().astype(np.float64),
                    "target_propensity": np.full(len(click), target_propensity),
                    "x_position": position - 1.0,  # OBD positions are 1-based
                },
                schema=SCHEMA,
            )
            writer.write_table(table)
            rows, clicks = rows + len(click), clicks + float(click.sum())
    return rows, clicks / max(rows, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--obd", type=Path, required=True, help="directory holding bts/all/all.csv, random/all/all.csv")
    parser.add_argument("--bootstrap", type=int, default=200, help="Poisson bootstrap replicates (default 200)")
    parser.add_argument("--out", type=Path, default=RESULTS / "obd_check.json")
    args = parser.parse_args()
    random_csv, bts_csv = args.obd / "random" / "all" / "all.csv", args.obd / "bts" / "all" / "all.csv"
    uniform = pcsv.read_csv(random_csv, convert_options=pcsv.ConvertOptions(include_columns=["propensity_score"]))
    propensities = np.unique(uniform.column("propensity_score").to_numpy())
    if len(propensities) != 1:
        raise SystemExit(f"{random_csv}: expected one propensity (uniform logging), got {propensities[:5]}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        on_policy_rows, truth = convert(random_csv, Path(tmp) / "random.parquet", float(propensities[0]))
        bts_rows, bts_mean = convert(bts_csv, Path(tmp) / "bts.parquet", float(propensities[0]))
        names = ["ips", "snips", "dr", "sndr", "switch_dr", "replay", "dm"]
        result = evaluate_external(Path(tmp) / "bts.parquet", create_estimators(names), bootstrap=args.bootstrap)
        on_policy = evaluate_external(
            Path(tmp) / "random.parquet", create_estimators(["ips"]), bootstrap=args.bootstrap
        )
    truth_interval = on_policy.estimates[0]
    figures = {
        "source": str(args.obd),
        "target": f"uniform random over items (propensity {propensities[0]:g} at every position)",
        "bts_log_rows": bts_rows,
        "bts_mean_click": bts_mean,
        "truth": {
            "random_log_rows": on_policy_rows,
            "mean_click": truth,
            "interval": [truth_interval.lower, truth_interval.upper],
        },
        "estimates": [
            {
                "estimator": e.estimator,
                "value": e.value,
                "lower": e.lower,
                "upper": e.upper,
                "covers_truth": e.lower <= truth <= e.upper,
                "flags": list(e.flags),
            }
            for e in result.estimates
        ],
        "effective_sample_size": result.diagnostics.effective_sample_size,
        "max_weight": result.diagnostics.max_weight,
        "warnings": list(result.diagnostics.warnings),
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"random policy's mean click on its own log: {truth:.5f} [{truth_interval.lower:.5f}, "
        f"{truth_interval.upper:.5f}] ({on_policy_rows} rows)"
    )
    print(f"estimated from the BTS log ({bts_rows} rows, its own mean click {bts_mean:.5f}):")
    for e in result.estimates:
        mark = "covers" if e.lower <= truth <= e.upper else "misses"
        print(
            f"  {e.estimator:<10}{e.value:.5f} [{e.lower:.5f}, {e.upper:.5f}] {mark}{'  (flagged)' if e.flags else ''}"
        )
    for w in result.diagnostics.warnings:
        print(f"  warning: {w}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
