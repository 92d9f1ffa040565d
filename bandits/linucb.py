"""LinUCB (Li et al., 2010) with one ridge model shared by all items: rank by an upper confidence bound."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Policy
from bandits.ridge import RidgeRegression


class LinUCB(Policy):
    """Rank candidates by ``theta^T x + alpha * sqrt(x^T A^-1 x)``, greedily (propensity 1.0 unless tied).

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    alpha
        Width of the confidence bound, non-negative; 0 is greedy on the mean.
    l2
        Ridge penalty of the reward model.
    """

    name = "linucb"

    def __init__(self, feature_dim: int, alpha: float = 1.0, l2: float = 1.0) -> None:
        super().__init__(feature_dim)
        if alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)
        self.model = RidgeRegression(feature_dim, l2)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Upper confidence bound of each candidate's reward."""
        return self.model.predict(features) + self.alpha * self.model.width(features)

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Fit the reward model on m served items."""
        self.model.update(features, rewards)

    def params(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"alpha": self.alpha, "l2": self.model.l2}

    def _state(self) -> dict[str, np.ndarray]:
        return self.model.state()

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.model.load(arrays)
