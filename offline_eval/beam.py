"""Offline evaluation on Apache Beam: the same estimators as mergeable statistics, on any runner.

The pipeline reads external bandit logs (:mod:`offline_eval.external_log`) file by file in batches, then

1. combines the cross-fitting folds' ridge statistics (:class:`RidgeCombineFn`) into the fold models,
2. scores each batch with them (a side input) and combines every estimator's terms and the weight diagnostics
   into one :class:`~offline_eval.summary.Summary` (:class:`SummaryCombineFn`), whose accumulators merge by
   addition in any order,

and writes the evaluation as JSON. Batch keys and round ids depend only on the file's position in the sorted file
list and the batch size, so a DirectRunner, Dataflow, Flink or Spark run gives the numbers of
:func:`offline_eval.streaming.evaluate_external` (to floating-point rounding in the order of sums).

Run: ``python -m offline_eval.beam --logs DIR --out result.json [--estimators ips,snips,dr --bootstrap 200]``
plus any Beam pipeline options (``--runner DataflowRunner --project P --region R --temp_location gs://...``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from offline_eval.base import RewardPredictions, SlateData
from offline_eval.estimators import create_estimators
from offline_eval.external_log import ExternalBatch, count_slots, log_files, read_file, with_external_flags
from offline_eval.reward_model import RidgeStatistics
from offline_eval.streaming import predictions, ridge_add
from offline_eval.summary import Evaluation, Summary


class ReadBatches(beam.DoFn):
    """(file number, path) -> the file's batches."""

    def __init__(self, batch_size: int, slots: int) -> None:
        self.batch_size, self.slots = batch_size, slots

    def process(self, element: tuple[int, str]) -> Iterator[ExternalBatch]:
        """Read one file."""
        number, path = element
        yield from read_file(path, number, self.batch_size, self.slots)


class RidgeCombineFn(beam.CombineFn):
    """Per-fold ridge sufficient statistics over batches -> folds-by-dim coefficients (None without data)."""

    def __init__(self, dim: int, folds: int, l2: float, seed: int) -> None:
        self.dim, self.folds, self.l2, self.seed = dim, folds, l2, seed

    def create_accumulator(self) -> RidgeStatistics:
        """Empty statistics."""
        return RidgeStatistics(self.dim, self.folds, self.l2)

    def add_input(self, accumulator: RidgeStatistics, element: ExternalBatch) -> RidgeStatistics:
        """Add a batch."""
        ridge_add(accumulator, element, self.seed)
        return accumulator

    def merge_accumulators(self, accumulators: Any) -> RidgeStatistics:
        """Sum partial statistics."""
        items = list(accumulators)
        first = items[0]
        for other in items[1:]:
            first.merge(other)
        return first

    def extract_output(self, accumulator: RidgeStatistics) -> list[list[float]]:
        """The fold models' coefficients, as lists (a side input)."""
        return np.asarray(accumulator.coefficients()).tolist()


class SummaryCombineFn(beam.CombineFn):
    """(batch, predictions) pairs -> :class:`Evaluation`; the accumulator is a :class:`Summary`."""

    def __init__(
        self,
        estimators: Sequence[str],
        slots: int,
        bootstrap: int,
        seed: int,
        level: float,
        reward_range: tuple[float, float] | None,
    ) -> None:
        self.names, self.slots, self.bootstrap = tuple(estimators), slots, bootstrap
        self.seed, self.level, self.reward_range = seed, level, reward_range

    def create_accumulator(self) -> Summary:
        """An empty summary."""
        return Summary(create_estimators(self.names), self.slots, self.bootstrap, self.seed, self.reward_range)

    def add_input(self, accumulator: Summary, element: tuple[SlateData, RewardPredictions | None, int]) -> Summary:
        """Add one scored batch."""
        data, scored, key = element
        accumulator.add(data, scored, key)
        return accumulator

    def merge_accumulators(self, accumulators: Any) -> Summary:
        """Sum partial summaries."""
        items = list(accumulators)
        first = items[0]
        for other in items[1:]:
            first.merge(other)
        return first

    def extract_output(self, accumulator: Summary) -> Evaluation:
        """The evaluation."""
        return with_external_flags(accumulator.evaluation(self.level))


def _score(batch: ExternalBatch, theta: list[list[float]] | None, seed: int) -> tuple[Any, Any, int]:
    scored = None if theta is None else predictions(np.asarray(theta), batch, seed)
    return batch.data, scored, batch.key


def evaluation_transform(
    files: Sequence[str | Path],
    estimators: Sequence[str] = ("ips", "snips", "dr"),
    batch_size: int = 1 << 20,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    folds: int = 2,
    l2: float = 1.0,
    reward_range: tuple[float, float] | None = None,
) -> beam.PTransform:
    """A transform from the pipeline's root to a one-element PCollection holding the :class:`Evaluation`."""
    names = [str(f) for f in files]
    slots = count_slots(names)
    chosen = create_estimators(list(estimators))
    dim = None
    if any(e.uses_model for e in chosen):
        first = next(read_file(names[0], 0, 1, slots), None)
        dim = (first.data.logged_features.shape[2] if first is not None else 0) + slots

    @beam.ptransform_fn
    def expand(root: beam.pvalue.PBegin) -> beam.PCollection:
        batches = (
            root | "Files" >> beam.Create(list(enumerate(names))) | "Read" >> beam.ParDo(ReadBatches(batch_size, slots))
        )
        if dim is None:
            scored = batches | "Score" >> beam.Map(_score, None, seed)
        else:
            theta = batches | "Fit" >> beam.CombineGlobally(RidgeCombineFn(dim, folds, l2, seed))
            scored = batches | "Score" >> beam.Map(_score, beam.pvalue.AsSingleton(theta), seed)
        combine = SummaryCombineFn(list(estimators), slots, bootstrap, seed, level, reward_range)
        return scored | "Estimate" >> beam.CombineGlobally(combine)

    return expand()


def to_json(evaluation: Evaluation) -> str:
    """An evaluation as JSON text."""
    return json.dumps(evaluation.to_dict())


def main(argv: list[str] | None = None) -> None:
    """Run the evaluation pipeline; unknown arguments are Beam pipeline options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--logs",
        required=True,
        help="external log file or directory (.parquet/.csv): a local path or a gs://, s3://, hdfs:// or file:// URI",
    )
    parser.add_argument("--out", required=True, help="where to write the JSON result (any Beam filesystem)")
    parser.add_argument(
        "--estimators", default="ips,snips,dr", help="comma-separated estimators (default ips,snips,dr)"
    )
    parser.add_argument("--batch-size", type=int, default=1 << 20, help="rows per batch (default 1048576)")
    parser.add_argument("--bootstrap", type=int, default=0, help="Poisson bootstrap replicates (default 0: normal)")
    parser.add_argument("--seed", type=int, default=0, help="folds and bootstrap seed (default 0)")
    args, beam_args = parser.parse_known_args(argv)
    files = log_files(args.logs)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        _ = (
            pipeline
            | "Evaluate" >> evaluation_transform(files, names, args.batch_size, args.bootstrap, seed=args.seed)
            | "Json" >> beam.Map(to_json)
            | "Write" >> beam.io.WriteToText(args.out, shard_name_template="")
        )


if __name__ == "__main__":
    main()
