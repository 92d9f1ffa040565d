"""Epsilon-greedy over the linear reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure, greedy, uniform
from bandits.linear import LinearPolicy


class EpsilonGreedy(LinearPolicy):
    """Each slot: with probability ``1 - epsilon`` the best predicted item, else a uniform available one.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    epsilon
        Exploration probability, in [0, 1].
    l2, arm_buckets, arm_l2, position_model, exposure
        See :class:`bandits.linear.LinearPolicy`.
    """

    name = "epsilon_greedy"

    def __init__(
        self,
        feature_dim: int,
        epsilon: float = 0.1,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """``(1 - epsilon)`` greedy plus ``epsilon`` spread evenly over the available candidates."""
        return (1.0 - self.epsilon) * greedy(scores, available) + self.epsilon * uniform(available)

    def _params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon} | self._linear_params()

    def greedy_mixture(self) -> float | None:
        """Epsilon: this policy's slots are exactly greedy mixed with uniform."""
        return self.epsilon
