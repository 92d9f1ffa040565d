"""Doubly robust estimation over slate prefixes."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms, require


class DoublyRobust(Estimator):
    """Per-slot doubly robust: ``V = sum_k mean_i(W_i,k-1 * qbar_ik + W_ik * (r_ik - q_ik))``.

    ``q`` and ``qbar`` are cross-fitted reward predictions (:func:`offline_eval.reward_model.cross_fit`) of the
    logged item and of the target's expected item at slot k given the logged prefix. Unbiased whenever the
    propensities are right, whatever the model; a good model lowers the variance.
    """

    name = "dr"
    uses_model = True

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Model baseline under the target plus the weighted residual, over ones."""
        q = require(predictions, self.name)
        num = data.previous_weights() * q.target + data.prefix_weights() * (data.reward - q.logged)
        return Terms(num * data.mask, np.ones(data.mask.shape))
