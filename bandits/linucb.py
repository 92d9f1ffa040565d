"""LinUCB (Li et al., 2010): rank by an upper confidence bound of the linear reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure
from bandits.linear import Arms, LinearPolicy


class LinUCB(LinearPolicy):
    """Rank by ``mean + alpha * sqrt(x^T A^-1 x + item/creator variance)``, greedily.

    Greedy means propensity 1.0 unless tied; set the exposure's ``floor`` so that its logs support offline
    evaluation of other policies.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    alpha
        Width of the confidence bound, non-negative; 0 is greedy on the mean.
    l2, arm_buckets, arm_l2, position_model, exposure
        See :class:`bandits.linear.LinearPolicy`.
    """

    name = "linucb"

    def __init__(
        self,
        feature_dim: int,
        alpha: float = 1.0,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)

    def linear_table(self, features: np.ndarray, arms: Arms) -> np.ndarray:
        """Upper confidence bound of each candidate's relevance."""
        mean = self.mean(features, arms)
        if not self.alpha:
            return mean
        variance = ((features @ self.model.A_inv) * features).sum(axis=-1)
        if arms is not None and self.arms is not None:
            variance = variance + self.arms.variance(*arms)
        return np.asarray(mean + self.alpha * np.sqrt(np.maximum(variance, 0.0)), dtype=np.float64)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha} | self._linear_params()
