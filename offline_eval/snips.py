"""Self-normalized inverse propensity scoring, slot by slot."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, SlateData


class SNIPS(Estimator):
    """``V = sum_k sum_i(W_ik r_ik) / sum_i(W_ik)``: slightly biased, much lower variance than IPS."""

    name = "snips"

    def terms(self, data: SlateData) -> tuple[np.ndarray, np.ndarray]:
        """Weighted rewards over weights."""
        weights = data.prefix_weights()
        return weights * data.reward, weights
