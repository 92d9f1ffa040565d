"""Switch doubly robust estimation (Wang, Agarwal and Dudik, 2017)."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms, require


class SwitchDoublyRobust(Estimator):
    """DR where a slot's weight exceeds ``tau``, the model alone (its residual term is dropped).

    ``V = sum_k mean_i(W_i,k-1 qbar_ik + 1[W_ik <= tau] W_ik (r_ik - q_ik))``. Equal to DR when no weight exceeds
    ``tau``; smaller ``tau`` lowers the variance and adds the model's bias on the switched slots.

    Parameters
    ----------
    tau
        Weight threshold, positive.
    """

    name = "switch_dr"
    uses_model = True

    def __init__(self, tau: float = 100.0) -> None:
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """DR terms with the residual switched off above ``tau``."""
        q = require(predictions, self.name)
        weights = data.prefix_weights()
        kept = np.where(weights <= self.tau, weights, 0.0)
        num = data.previous_weights() * q.target + kept * (data.reward - q.logged)
        return Terms(num * data.mask, np.ones(data.mask.shape))
