"""The Beam pipeline (DirectRunner) gives the numbers of the in-process streaming path."""

from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that
from factorized_slates import sample, slate_world
from test_external_log import to_rows

from offline_eval.beam import evaluation_transform, main
from offline_eval.estimators import create_estimators
from offline_eval.external_log import ACTION_FREE_MODEL
from offline_eval.streaming import evaluate_external


@pytest.mark.slow
def test_direct_runner_equals_the_streaming_path(tmp_path: Path) -> None:
    table = to_rows(sample(slate_world(seed=31), 3_000, seed=32))
    cut = int((table.column("round").to_numpy() < 1500).sum())  # files hold whole rounds
    pq.write_table(table.slice(0, cut), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(cut), tmp_path / "part-1.parquet")
    files = sorted(tmp_path.glob("*.parquet"))
    names = ["ips", "snips", "dr", "sndr", "slate_ips", "dm"]
    expected = evaluate_external(tmp_path, create_estimators(names), batch_size=600, bootstrap=50, seed=3)

    def check(outputs: list) -> None:
        (got,) = outputs
        for g, e in zip(got.estimates, expected.estimates, strict=True):
            assert g.estimator == e.estimator
            assert g.value == pytest.approx(e.value, rel=1e-9)
            assert g.lower == pytest.approx(e.lower, rel=1e-6) and g.upper == pytest.approx(e.upper, rel=1e-6)
            assert g.std_error == pytest.approx(e.std_error, rel=1e-6)
            assert g.flags == e.flags
        assert got.estimates[-1].flags == (ACTION_FREE_MODEL,)
        assert got.diagnostics.ess_per_slot == pytest.approx(expected.diagnostics.ess_per_slot)

    with beam.Pipeline("DirectRunner") as pipeline:
        result = pipeline | evaluation_transform(files, names, batch_size=600, bootstrap=50, seed=3)
        assert_that(result, check)
    out = tmp_path / "result.json"
    main(["--logs", str(tmp_path), "--out", str(out), "--estimators", "ips", "--batch-size", "600"])
    assert '"estimator": "ips"' in out.read_text()
