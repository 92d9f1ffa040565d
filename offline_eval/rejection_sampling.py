"""The replay method (Li et al., 2011) as rejection sampling, for deterministic and stochastic targets."""

from __future__ import annotations

import numpy as np

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class RejectionSampling(Estimator):
    """Replay: keep a decision's slot k with probability ``W~_ik / max_i W~_ik``, average the kept rewards.

    With a deterministic target and uniform logging this is the classic replay method (keep the decisions where
    the target would have made the logged choice). For any target it is rejection sampling: the kept decisions
    are distributed as if the target had made them, so the mean kept reward estimates the target's. Consistent;
    it discards data, so it has more variance than SNIPS, of which it is a randomized version.

    Parameters
    ----------
    seed
        Seed of the acceptance draws (one uniform per decision, shared by its slots). The generator advances
        from call to call, so chunks of one log get independent draws; the bound ``max W~`` is per chunk.
    """

    name = "replay"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Kept rewards over kept indicators."""
        ext = data.extended_weights()
        top = ext.max(axis=0) if data.n else np.ones(data.slots)
        u = self._rng.random(data.n)[:, None]
        kept = (u * np.where(top > 0, top, 1.0) < ext).astype(np.float64)
        return Terms(kept * data.reward * data.mask, kept)
