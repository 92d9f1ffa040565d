"""Independent IPS (IIPS) for slates."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class IndependentIPS(Estimator):
    """``V = sum_k mean_i(rho_ik r_ik)`` with the single slot's ratio ``rho_k``, not the prefix's.

    Unbiased when slot k's reward depends only on its own item and ``rho_k`` is the ratio of the *marginal*
    probabilities of the item at slot k. Scout logs conditional propensities, which equal the marginals when the
    policies choose slots independently (and in external logs whose propensity is per position); for sequential
    slates without replacement it is biased, and the lowest-variance slate estimator here.
    """

    name = "iips"

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Per-slot ratio times reward, over ones."""
        return Terms(data.ratios() * data.reward * data.mask, np.ones(data.mask.shape))
