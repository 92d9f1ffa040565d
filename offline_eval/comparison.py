"""Compare candidate policies on the same logs, rank them and gate each against the logging policy.

Each candidate is replayed on the same decisions and estimated with the same estimators and seed. The logging
policy's value is the mean logged total reward with its normal interval (on-policy, no weights). A candidate
*beats the logging policy* when the lower bound of its interval from the primary estimator is above the logging
policy's mean; ranking is by the primary estimator's point estimate. Candidates whose primary estimate carries a
flag, or whose diagnostics warn, are listed with their warnings and never pass the gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bandits.base import Policy
from embeddings.index import IndexArtifact
from offline_eval.base import Estimate, Estimator
from offline_eval.emerging_metrics import EmergingMetrics, emerging_metrics
from offline_eval.estimators import create_estimators
from offline_eval.evaluation import evaluate_data
from offline_eval.logs import DecisionLog
from offline_eval.replay import replay_with_distributions
from offline_eval.summary import Evaluation


@dataclass(frozen=True)
class Candidate:
    """A named target policy to compare."""

    name: str
    policy: Policy


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's estimates, diagnostics, emerging-creator metrics and gate."""

    name: str
    policy: str
    params: dict[str, object]
    version: int
    evaluation: Evaluation
    emerging: EmergingMetrics
    primary: Estimate
    beats_logging: bool
    rank: int


@dataclass(frozen=True)
class Comparison:
    """Candidates ranked by the primary estimator, next to the logging policy's on-policy value."""

    decisions: int
    primary: str
    logging: Estimate
    logging_emerging: EmergingMetrics
    candidates: tuple[CandidateResult, ...]


def logging_value(log: DecisionLog, level: float = 0.95) -> Estimate:
    """The logging policy's mean total slate reward with a normal interval."""
    totals = np.array([sum(r) for r in log["rewards"]], dtype=np.float64)
    n = len(totals)
    if n == 0:
        raise ValueError("no decisions to evaluate")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    se = float(totals.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    mean = float(totals.mean())
    return Estimate("logged", mean, mean - z * se, mean + z * se, level, n, "normal", se)


def compare(
    log: DecisionLog,
    index: IndexArtifact,
    candidates: Sequence[Candidate],
    estimators: tuple[Estimator, ...] | None = None,
    primary: str | None = None,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Evaluate every candidate on ``log`` and rank them.

    Parameters
    ----------
    log, index
        The decisions and the index artifact they were made with.
    candidates
        Named target policies (names must be unique).
    estimators
        Estimators to report (IPS, SNIPS, DR by default).
    primary
        The estimator that ranks and gates; the last of ``estimators`` (DR by default) when None.
    bootstrap, level, seed
        Intervals: Poisson bootstrap replicates (0 for normal intervals), level and seed.
    progress
        Called with each candidate's name when it is done.
    """
    names = [c.name for c in candidates]
    if not candidates:
        raise ValueError("candidates: give at least one policy to evaluate")
    if len(set(names)) != len(names):
        raise ValueError(f"candidates: names must be unique, got {names}")
    chosen = estimators or create_estimators()
    primary = primary or chosen[-1].name
    if primary not in [e.name for e in chosen]:
        raise ValueError(f"primary: {primary!r} is not one of the estimators {[e.name for e in chosen]}")
    baseline = logging_value(log, level)
    results = []
    logging_emerging = None
    for candidate in candidates:
        data, dists, batches = replay_with_distributions(log, index, candidate.policy)
        evaluation = evaluate_data(data, chosen, bootstrap, level, seed)
        metrics = emerging_metrics(data, dists, batches)
        if logging_emerging is None:
            logging_emerging = emerging_metrics(data, None, batches)
        estimate = next(e for e in evaluation.estimates if e.estimator == primary)
        trusted = not estimate.flags and not evaluation.diagnostics.warnings
        beats = bool(trusted and estimate.lower > baseline.value)
        results.append((candidate, evaluation, metrics, estimate, beats))
        if progress is not None:
            progress(candidate.name)
    order = sorted(range(len(results)), key=lambda i: -results[i][3].value)
    ranks = {i: r + 1 for r, i in enumerate(order)}
    out = tuple(
        CandidateResult(c.name, c.policy.name, dict(c.policy.params()), c.policy.version, ev, em, est, beats, ranks[i])
        for i, (c, ev, em, est, beats) in enumerate(results)
    )
    assert logging_emerging is not None
    return Comparison(len(log), primary, baseline, logging_emerging, tuple(sorted(out, key=lambda r: r.rank)))
