"""Softmax (Boltzmann) exploration over the linear reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure
from bandits.linear import LinearPolicy, softmax


class Softmax(LinearPolicy):
    """Each slot: an available item with probability proportional to ``exp(predicted reward / temperature)``.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    temperature
        Positive; small is nearly greedy, large nearly uniform (in reward units).
    l2, arm_buckets, arm_l2, position_model, exposure
        See :class:`bandits.linear.LinearPolicy`.
    """

    name = "softmax"

    def __init__(
        self,
        feature_dim: int,
        temperature: float = 0.05,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Softmax of ``scores / temperature`` over the available candidates."""
        return softmax(scores / self.temperature, available)

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature} | self._linear_params()
