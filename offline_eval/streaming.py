"""Evaluate external bandit logs of any size in bounded memory: two passes over batches of rounds.

Pass 1 (only when an estimator needs a reward model) accumulates the cross-fitting folds' ridge statistics; pass 2
computes every estimator's terms per batch with the fold models and adds them to one
:class:`~offline_eval.summary.Summary`. Memory is one batch plus O(B * J + J^2 + F^2), whatever the number of
rounds. The Beam pipeline (:mod:`offline_eval.beam`) runs the same two steps as combiners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData
from offline_eval.estimators import create_estimators
from offline_eval.external_log import ExternalBatch, count_slots, log_files, read_external, with_external_flags
from offline_eval.reward_model import RidgeStatistics, design, fold_of
from offline_eval.summary import Evaluation, Summary

log = logging.getLogger(__name__)


def ridge_add(stats: RidgeStatistics, batch: ExternalBatch, seed: int) -> None:
    """Add a batch's served slots to the per-fold ridge statistics."""
    data = batch.data
    fold = fold_of(np.arange(batch.first_round, batch.first_round + data.n), stats.folds, seed)
    flat_fold = np.broadcast_to(fold[:, None], data.mask.shape)[data.mask]
    stats.add(design(data.logged_features)[data.mask], data.reward[data.mask], flat_fold)


def predictions(theta: np.ndarray, batch: ExternalBatch, seed: int) -> RewardPredictions:
    """Fold-model predictions for a batch (each round scored by the model that did not see its fold)."""
    data = batch.data
    fold = fold_of(np.arange(batch.first_round, batch.first_round + data.n), theta.shape[0], seed)
    coef = theta[fold]  # per round: F feature weights, then one intercept per slot (the design's one-hot)
    f, s = data.logged_features.shape[2], data.slots
    intercept = coef[:, f : f + s]
    q_logged = (np.einsum("nsf,nf->ns", data.logged_features, coef[:, :f]) + intercept) * data.mask
    q_target = (np.einsum("nsf,nf->ns", data.target_features, coef[:, :f]) + intercept) * data.mask
    return RewardPredictions(q_logged, q_target)


def evaluate_external(
    path: str | Path | Sequence[str | Path],
    estimators: Sequence[Estimator | str] | None = None,
    batch_size: int = 1 << 20,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    folds: int = 2,
    l2: float = 1.0,
    reward_range: tuple[float, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Estimate the target (whose probabilities are in the logs) from external logs, streaming.

    Parameters
    ----------
    path
        File, directory or list of ``.parquet``/``.csv`` files in the layout of :mod:`offline_eval.external_log`.
    estimators
        Estimators, or their names (``offline_eval.estimators.ESTIMATORS``; ``"all"`` for every one); IPS, SNIPS
        and DR by default.
    batch_size
        Rows per batch; bounds the memory.
    bootstrap
        Poisson bootstrap replicates (0: normal intervals).
    level
        Interval level.
    seed
        Seed of the folds and of the bootstrap.
    folds, l2
        Cross-fitting folds and ridge penalty of the reward model.
    reward_range
        Bounds of one slot's reward, for flagging; the observed range when None.
    progress
        Called with the number of rounds done after each batch.
    """
    chosen = _chosen(estimators)
    files = log_files(path)
    slots = count_slots(files)
    theta = None
    if any(e.uses_model for e in chosen):
        stats: RidgeStatistics | None = None
        for batch in read_external(files, batch_size, slots):
            if stats is None:
                stats = RidgeStatistics(batch.data.logged_features.shape[2] + slots, folds, l2)
            ridge_add(stats, batch, seed)
        theta = stats.coefficients() if stats is not None else None
    summary = Summary(chosen, slots, bootstrap, seed, reward_range)
    done = 0
    for batch in read_external(files, batch_size, slots):
        summary.add(batch.data, None if theta is None else predictions(theta, batch, seed), batch.key)
        done += batch.data.n
        if progress is not None:
            progress(done)
    log.info("evaluated %d rounds from %d file(s)", done, len(files))
    return with_external_flags(summary.evaluation(level))


def _chosen(estimators: Sequence[Estimator | str] | None) -> tuple[Estimator, ...]:
    """Estimators given as objects or as names (not a mix)."""
    if not estimators:
        return create_estimators()
    if isinstance(estimators, str):  # one name, or "all"
        return create_estimators([estimators])
    names = [e for e in estimators if isinstance(e, str)]
    if not names:
        return tuple(e for e in estimators if not isinstance(e, str))
    if len(names) != len(estimators):
        raise TypeError("give estimators or their names, not a mix")
    return create_estimators(names)


def in_memory(batches: list[ExternalBatch]) -> SlateData:
    """All batches as one SlateData (for tests and small logs)."""
    from offline_eval.replay import concat

    return concat([b.data for b in batches])
