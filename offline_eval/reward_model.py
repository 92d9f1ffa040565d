"""Cross-fitted reward models for DM and the doubly robust family.

No decision is scored by a model that saw it: decisions are split into folds by a hash of their row number and the
seed, and each fold is predicted by a model fitted on the other folds. The default model is ridge regression on the
item's features plus a per-slot intercept, kept as sufficient statistics (``X^T X``, ``X^T y`` per fold), so the
fit streams and merges; because it is linear, the target's expected prediction at a slot is the model applied to
the target's expected features. A user's own model (anything with ``fit`` and ``predict``) is accepted through
``model`` and cross-fitted the same way.
"""

from __future__ import annotations

import numpy as np

from bandits.features import folded_weights
from offline_eval.base import RewardModelFactory, RewardPredictions, SlateData, SlateFeatureParts

#: Decisions whose design matrices the ridge model builds at once.
CHUNK = 2048


def fold_of(rows: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each row number: a splitmix64 hash of (row, seed) modulo ``folds``."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(folds)).astype(np.int64)


def design(features: np.ndarray) -> np.ndarray:
    """n-by-S-by-(F+S): features with a one-hot slot intercept appended."""
    n, s, _ = features.shape
    return np.concatenate([features, np.broadcast_to(np.eye(s), (n, s, s))], axis=2)


class RidgeStatistics:
    """Per-fold ridge sufficient statistics ``X^T X`` and ``X^T y``, mergeable by addition.

    Parameters
    ----------
    dim
        Columns of the design matrix.
    folds
        Number of cross-fitting folds (at least 2).
    l2
        Ridge penalty.
    """

    def __init__(self, dim: int, folds: int = 2, l2: float = 1.0) -> None:
        if folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds}")
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        self.dim, self.folds, self.l2 = dim, folds, l2
        self.xtx = np.zeros((folds, dim, dim))
        self.xty = np.zeros((folds, dim))

    def add(self, X: np.ndarray, y: np.ndarray, fold: np.ndarray) -> None:
        """Add m rows: m-by-dim design, m targets, m fold numbers."""
        for f in range(self.folds):
            rows = fold == f
            Xf = X[rows]
            self.xtx[f] += Xf.T @ Xf
            self.xty[f] += Xf.T @ y[rows]

    def merge(self, other: RidgeStatistics) -> RidgeStatistics:
        """Add ``other`` into this one and return it."""
        self.xtx += other.xtx
        self.xty += other.xty
        return self

    def coefficients(self) -> np.ndarray:
        """folds-by-dim: fold f's coefficients, fitted on every other fold."""
        total_xtx, total_xty = self.xtx.sum(axis=0), self.xty.sum(axis=0)
        eye = self.l2 * np.eye(self.dim)
        return np.stack(
            [np.linalg.solve(total_xtx - self.xtx[f] + eye, total_xty - self.xty[f]) for f in range(self.folds)]
        )


def _factored_predictions(parts: SlateFeatureParts, theta: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """``design(features) @ theta`` for the logged and the target's expected items, without the features.

    Each decision's coefficients (n-by-(F+S): the feature blocks, the bias, the slot intercepts) fold into one
    d-vector ``w = sum_b W_b theta_b`` (:func:`bandits.features.folded_weights`), so a slot's prediction is
    ``v.w + bias * mass + intercept``: the mass is 1 for the logged item, the target's total probability otherwise.
    """
    f = (2 + np.shape(parts.context)[1]) * np.shape(parts.query)[1]  # feature coefficients before the bias
    w = folded_weights(parts.query, parts.context, theta[:, :f])
    bias, intercept = theta[:, f], theta[:, f + 1 : f + 1 + s]
    logged = np.einsum("nsd,nd->ns", np.asarray(parts.logged_items, dtype=np.float64), w) + bias[:, None] + intercept
    target = np.einsum("nsd,nd->ns", parts.target_items, w) + bias[:, None] * parts.target_mass + intercept
    return logged, target


def cross_fit(
    data: SlateData,
    model: RewardModelFactory | None = None,
    folds: int = 2,
    l2: float = 1.0,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> RewardPredictions:
    """Cross-fitted predictions ``q`` (logged items) and ``qbar`` (target's expectation) for every slot.

    Parameters
    ----------
    data
        The logged slates.
    model
        Factory of a user-supplied model with ``fit(features, rewards)`` and ``predict(features)``; one is built
        per fold. It sees the item's features with a one-hot slot intercept appended. Ridge when omitted.
    folds
        Number of folds (at least 2).
    l2
        Ridge penalty of the default model.
    seed
        Seed of the fold assignment.
    rows
        Global row numbers of the decisions (for streaming: the same decision always lands in the same fold);
        ``0..n-1`` when omitted.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    n, s = data.mask.shape
    fold = fold_of(np.arange(n) if rows is None else rows, folds, seed)
    q_logged, q_target = np.zeros((n, s)), np.zeros((n, s))
    if model is None:
        # A chunk at a time, so that data holding feature parts never builds all n-by-S-by-F features at once.
        chunks = [slice(start, start + CHUNK) for start in range(0, n, CHUNK)]
        stats: RidgeStatistics | None = None
        for rows_ in chunks:
            part = data.take(rows_)
            logged = design(part.logged_features)
            stats = stats or RidgeStatistics(logged.shape[2], folds, l2)
            flat_fold = np.broadcast_to(fold[rows_, None], part.mask.shape)[part.mask]
            stats.add(logged[part.mask], part.reward[part.mask], flat_fold)
        if stats is None:
            return RewardPredictions(q_logged, q_target)
        theta = stats.coefficients()
        if data.parts is not None and not data.features_built:
            q_logged, q_target = _factored_predictions(data.parts, theta[fold], s)
        else:
            for rows_ in chunks:
                part = data.take(rows_)
                q_logged[rows_] = np.einsum("nsf,nf->ns", design(part.logged_features), theta[fold[rows_]])
                q_target[rows_] = np.einsum("nsf,nf->ns", design(part.target_features), theta[fold[rows_]])
    else:
        logged, target = design(data.logged_features), design(data.target_features)
        for f in range(folds):
            train = (fold != f)[:, None] & data.mask
            fitted = model()
            fitted.fit(logged[train], data.reward[train])
            here = fold == f
            if here.any():
                m = int(here.sum())
                q_logged[here] = np.asarray(fitted.predict(logged[here].reshape(m * s, -1))).reshape(m, s)
                q_target[here] = np.asarray(fitted.predict(target[here].reshape(m * s, -1))).reshape(m, s)
    return RewardPredictions(q_logged * data.mask, q_target * data.mask)
