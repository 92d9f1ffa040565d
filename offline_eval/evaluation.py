"""Evaluate a target policy on exported logs: replay, estimators, intervals, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

from bandits.base import Policy
from embeddings.index import IndexArtifact
from offline_eval.base import Estimate, Estimator
from offline_eval.diagnostics import Diagnostics, diagnose
from offline_eval.doubly_robust import DoublyRobust
from offline_eval.ips import IPS
from offline_eval.logs import DecisionLog
from offline_eval.replay import replay
from offline_eval.snips import SNIPS


@dataclass(frozen=True)
class Evaluation:
    """Estimates of one target policy's expected slate reward, with diagnostics."""

    estimates: tuple[Estimate, ...]
    diagnostics: Diagnostics


def default_estimators(seed: int = 0) -> tuple[Estimator, ...]:
    """IPS, SNIPS and doubly robust."""
    return IPS(), SNIPS(), DoublyRobust(seed=seed)


def evaluate(
    log: DecisionLog,
    index: IndexArtifact,
    target: Policy,
    estimators: tuple[Estimator, ...] | None = None,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Estimate ``target``'s expected total slate reward on the decisions in ``log``."""
    data = replay(log, index, target)
    chosen = estimators or default_estimators(seed)
    estimates = tuple(e.estimate(data, bootstrap=bootstrap, level=level, seed=seed) for e in chosen)
    return Evaluation(estimates, diagnose(data))
