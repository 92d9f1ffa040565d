"""Epsilon-greedy over a ridge reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Policy, greedy
from bandits.ridge import RidgeRegression


class EpsilonGreedy(Policy):
    """Each slot: with probability ``1 - epsilon`` the best predicted item, else a uniform available one.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    epsilon
        Exploration probability, in [0, 1].
    l2
        Ridge penalty of the reward model.
    """

    name = "epsilon_greedy"

    def __init__(self, feature_dim: int, epsilon: float = 0.1, l2: float = 1.0) -> None:
        super().__init__(feature_dim)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)
        self.model = RidgeRegression(feature_dim, l2)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Predicted reward of each candidate."""
        return self.model.predict(features)

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """``(1 - epsilon)`` greedy plus ``epsilon`` spread evenly over the available candidates."""
        uniform = available / available.sum()
        return (1.0 - self.epsilon) * greedy(scores, available) + self.epsilon * uniform

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Fit the reward model on m served items."""
        self.model.update(features, rewards)

    def params(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"epsilon": self.epsilon, "l2": self.model.l2}

    def _state(self) -> dict[str, np.ndarray]:
        return self.model.state()

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.model.load(arrays)
