"""The direct method: the reward model's prediction of the target's reward."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms, require


class DirectMethod(Estimator):
    """``V = sum_k mean_i(qbar_ik)``: no weights, low variance, biased as much as the (cross-fitted) model is."""

    name = "dm"
    uses_model = True

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Target's expected predicted reward per served slot, over ones."""
        q = require(predictions, self.name)
        return Terms(q.target * data.mask, np.ones(data.mask.shape))
