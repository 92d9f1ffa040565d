"""IPS with clipped importance weights."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class ClippedIPS(Estimator):
    """``V = sum_k mean_i(min(W_ik, M) r_ik)``: trades bias (towards lower values) for variance.

    Parameters
    ----------
    max_weight
        The clipping threshold M, positive. Unbiased where no weight exceeds it.
    """

    name = "clipped_ips"

    def __init__(self, max_weight: float = 100.0) -> None:
        if not max_weight > 0:
            raise ValueError(f"max_weight must be positive, got {max_weight}")
        self.max_weight = float(max_weight)

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Clipped weighted rewards over ones."""
        return Terms(np.minimum(data.prefix_weights(), self.max_weight) * data.reward, np.ones(data.mask.shape))
