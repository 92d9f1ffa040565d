"""Evaluate a target policy on exported logs: replay, estimators, intervals, diagnostics."""

from __future__ import annotations

import numpy as np

from bandits.base import Policy
from embeddings.index import IndexArtifact
from offline_eval.base import Estimator, RewardModelFactory, RewardPredictions, SlateData
from offline_eval.estimators import create_estimators
from offline_eval.logs import DecisionLog
from offline_eval.replay import replay
from offline_eval.reward_model import cross_fit
from offline_eval.summary import Evaluation, Summary

__all__ = ["Evaluation", "default_estimators", "evaluate", "evaluate_data"]

#: Decisions per chunk of the in-memory path (chunk i seeds its bootstrap counts with key i).
CHUNK = 1 << 16


def default_estimators(seed: int = 0) -> tuple[Estimator, ...]:
    """IPS, SNIPS and doubly robust."""
    return create_estimators()


def evaluate_data(
    data: SlateData,
    estimators: tuple[Estimator, ...] | None = None,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    model: RewardModelFactory | None = None,
    predictions: RewardPredictions | None = None,
) -> Evaluation:
    """Estimates of the value behind ``data``, with one cross-fitted reward model shared by the estimators.

    Intervals are normal (delta method) unless ``bootstrap`` > 0 asks for that many Poisson bootstrap replicates.
    ``predictions`` replaces the cross-fitted ``model`` (a user's own out-of-fold reward predictions).
    """
    if data.n == 0:
        raise ValueError("no decisions to evaluate")
    chosen = estimators or default_estimators(seed)
    if predictions is None and any(e.uses_model for e in chosen):
        predictions = cross_fit(data, model, seed=seed)
    summary = Summary(chosen, data.slots, bootstrap, seed, data.reward_range)
    for key, start in enumerate(range(0, data.n, CHUNK)):
        rows = np.arange(start, min(start + CHUNK, data.n))
        part = predictions and type(predictions)(predictions.logged[rows], predictions.target[rows])
        summary.add(data.take(rows), part, key)
    return summary.evaluation(level)


def evaluate(
    log: DecisionLog,
    index: IndexArtifact,
    target: Policy,
    estimators: tuple[Estimator, ...] | None = None,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    model: RewardModelFactory | None = None,
) -> Evaluation:
    """Estimate ``target``'s expected total slate reward on the decisions in ``log``."""
    return evaluate_data(replay(log, index, target), estimators, bootstrap, level, seed, model)
