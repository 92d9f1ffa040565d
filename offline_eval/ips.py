"""Inverse propensity scoring over slate prefixes."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class IPS(Estimator):
    """``V = sum_k mean_i(W_ik r_ik)`` with prefix weights ``W_k``.

    Unbiased when the logging policy gives positive probability to every prefix the target can draw and a slot's
    reward depends only on the items up to it (the reward-interaction, or cascade, assumption; on slates this is
    RIPS). One component per slot.
    """

    name = "ips"

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Weighted rewards over ones."""
        return Terms(data.prefix_weights() * data.reward, np.ones(data.mask.shape))
