"""Inverse propensity scoring over slate prefixes."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, SlateData


class IPS(Estimator):
    """``V = sum_k mean_i(W_ik r_ik)``: unbiased when the logging policy covers the target's choices."""

    name = "ips"

    def terms(self, data: SlateData) -> tuple[np.ndarray, np.ndarray]:
        """Weighted rewards over ones."""
        return data.prefix_weights() * data.reward, np.ones(data.mask.shape)
