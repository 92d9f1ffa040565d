"""Doubly robust estimation with optimistic shrinkage (DRos; Su et al., 2020)."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms, require


class OptimisticShrinkage(Estimator):
    """DR with each weight shrunk to ``lambda W / (W^2 + lambda)``.

    The shrunk weight is close to ``W`` for ``W << sqrt(lambda)`` and goes to zero for large weights, which
    bounds the variance; as ``lambda`` grows DRos becomes DR.

    Parameters
    ----------
    shrinkage
        ``lambda``, positive.
    """

    name = "dros"
    uses_model = True

    def __init__(self, shrinkage: float = 1000.0) -> None:
        if not shrinkage > 0:
            raise ValueError(f"shrinkage must be positive, got {shrinkage}")
        self.shrinkage = float(shrinkage)

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """DR terms with shrunk weights on the residual."""
        q = require(predictions, self.name)
        weights = data.prefix_weights()
        shrunk = self.shrinkage * weights / (weights**2 + self.shrinkage)
        num = data.previous_weights() * q.target + shrunk * (data.reward - q.logged)
        return Terms(num * data.mask, np.ones(data.mask.shape))
