"""Standard slate IPS: every slot weighted by the whole slate's ratio."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class SlateIPS(Estimator):
    """``V = sum_k mean_i(W_i,slate r_ik)``: unbiased for any reward structure, the highest variance."""

    name = "slate_ips"

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Whole-slate weight times each slot's reward, over ones."""
        return Terms(data.slate_weights()[:, None] * data.reward, np.ones(data.mask.shape))
