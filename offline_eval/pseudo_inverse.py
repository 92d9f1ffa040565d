"""The pseudo-inverse estimator for slates (Swaminathan et al., 2017)."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class PseudoInverse(Estimator):
    """``V = mean_i(R_i (sum_k rho_ik - L_i + 1))`` for slates of L_i slots with total reward ``R_i``.

    The closed form of the pseudo-inverse estimator when the logging policy chooses slots independently (so the
    ratios ``rho_k`` are of marginal probabilities, see :class:`~offline_eval.independent_ips.IndependentIPS`);
    unbiased when the slate's reward is the sum of per-slot rewards that each depend on the slot's own item.
    One component per slot.
    """

    name = "pseudo_inverse"

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Each slot's reward times the slate's pseudo-inverse weight, over ones."""
        ratios = data.ratios()
        weight = (ratios * data.mask).sum(axis=1) - data.lengths() + 1.0
        return Terms(weight[:, None] * data.reward * data.mask, np.ones(data.mask.shape))
