"""Doubly robust estimation over slate prefixes, with a cross-fitted linear reward model."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, SlateData


class DoublyRobust(Estimator):
    """Per-slot doubly robust: ``V = sum_k mean_i(W_i,k-1 * qbar_ik + W_ik * (r_ik - qhat_ik))``.

    ``qhat`` is a ridge model of the reward on the item's features plus a per-slot intercept; because it is
    linear, the target's expected prediction ``qbar`` at slot k is the model applied to the target's expected
    features. The model is cross-fitted: each fold of decisions is scored by a model fitted on the other folds.
    Unbiased whenever the propensities are right, whatever the model; a good model lowers the variance.

    Parameters
    ----------
    folds
        Number of cross-fitting folds (at least 2).
    l2
        Ridge penalty of the reward model.
    seed
        Seed of the fold assignment.
    """

    name = "dr"

    def __init__(self, folds: int = 2, l2: float = 1.0, seed: int = 0) -> None:
        if folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds}")
        self.folds, self.l2, self.seed = folds, l2, seed

    def terms(self, data: SlateData) -> tuple[np.ndarray, np.ndarray]:
        """Model baseline under the target plus the weighted residual, over ones."""
        n, s = data.mask.shape
        slot = np.broadcast_to(np.eye(s), (n, s, s))
        logged = np.concatenate([data.logged_features, slot], axis=2)
        target = np.concatenate([data.target_features, slot], axis=2)
        fold = np.random.default_rng(self.seed).integers(self.folds, size=n)
        q_logged, q_target = np.zeros((n, s)), np.zeros((n, s))
        for f in range(self.folds):
            train = (fold != f)[:, None] & data.mask
            theta = self._fit(logged[train], data.reward[train])
            q_logged[fold == f] = logged[fold == f] @ theta
            q_target[fold == f] = target[fold == f] @ theta
        weights = data.prefix_weights()
        previous = np.hstack([np.ones((n, 1)), weights[:, :-1]]) * data.mask
        num = previous * q_target + weights * (data.reward - q_logged)
        return num * data.mask, np.ones((n, s))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.linalg.solve(X.T @ X + self.l2 * np.eye(X.shape[1]), X.T @ y)
