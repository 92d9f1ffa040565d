"""Self-normalized doubly robust estimation (SNDR)."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms, require


class SelfNormalizedDoublyRobust(Estimator):
    """DR with both weighted parts normalized by their mean extended weight.

    ``V = sum_k [sum_i W_i,k-1 qbar_ik / sum_i W~_i,k-1 + sum_i W_ik (r_ik - q_ik) / sum_i W~_ik]``; two
    components per slot. Consistent, bounded like SNIPS when weights are heavy-tailed.
    """

    name = "sndr"
    uses_model = True

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Baseline and residual components with their extended weights as denominators."""
        q = require(predictions, self.name)
        ext = data.extended_weights()
        previous_ext = np.hstack([np.ones((data.n, 1)), ext[:, :-1]])
        baseline = data.previous_weights() * q.target * data.mask
        residual = data.prefix_weights() * (data.reward - q.logged) * data.mask
        return Terms(np.hstack([baseline, residual]), np.hstack([previous_ext, ext]))
