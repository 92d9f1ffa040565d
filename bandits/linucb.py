"""LinUCB (Li et al., 2010): rank by an upper confidence bound of the linear reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure, FeatureParts
from bandits.features import block_weights
from bandits.linear import Arms, LinearPolicy


class LinUCB(LinearPolicy):
    """Rank by ``mean + alpha * sqrt(x^T A^-1 x + item/creator variance)``, greedily.

    Greedy means propensity 1.0 unless tied; set the exposure's ``floor`` so that its logs support offline
    evaluation of other policies.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    alpha
        Width of the confidence bound, non-negative; 0 is greedy on the mean.
    l2, arm_buckets, arm_l2, position_model, exposure
        See :class:`bandits.linear.LinearPolicy`.
    """

    name = "linucb"

    def __init__(
        self,
        feature_dim: int,
        alpha: float = 1.0,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        self._blocks: tuple[np.ndarray, np.ndarray, float] | None = None
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)

    def linear_table(self, features: np.ndarray, arms: Arms, parts: FeatureParts | None = None) -> np.ndarray:
        """Upper confidence bound of each candidate's relevance.

        With ``parts`` (one decision), ``x^T A^-1 x`` comes from the factored form ``v^T H v + 2 v.h + g`` where
        ``v`` is the d-dimensional item vector and ``H``, ``h``, ``g`` fold the request's block weights into
        ``A^-1`` once per request: O(K d^2) instead of O(K F^2).
        """
        mean = self.mean(features, arms)
        if not self.alpha:
            return mean
        if parts is not None and features.ndim == 2:
            variance = self._factored_variance(parts)
        else:
            variance = ((features @ self.model.A_inv) * features).sum(axis=-1)
        if arms is not None and self.arms is not None:
            variance = variance + self.arms.variance(*arms)
        return np.asarray(mean + self.alpha * np.sqrt(np.maximum(variance, 0.0)), dtype=np.float64)

    def _factored_variance(self, parts: FeatureParts) -> np.ndarray:
        W = block_weights(parts.query, parts.context)
        blocks, d = W.shape
        bd = blocks * d
        if self._blocks is None:
            G = self.model.A_inv
            self._blocks = (
                np.ascontiguousarray(G[:bd, :bd].reshape(blocks, d, blocks, d).transpose(0, 2, 1, 3)),
                np.ascontiguousarray(G[:bd, -1].reshape(blocks, d)),
                float(G[-1, -1]),
            )
        G4, g, g0 = self._blocks
        H = np.einsum("bi,bij->ij", W, np.einsum("bcij,cj->bij", G4, W))
        h = (g * W).sum(axis=0)
        V = parts.items
        return np.asarray(np.einsum("ki,ki->k", V @ H, V) + 2.0 * (V @ h) + g0, dtype=np.float64)

    def _changed(self) -> None:
        self._blocks = None

    def greedy_mixture(self) -> float | None:
        """0: LinUCB's slots are greedy on the upper confidence bound."""
        return 0.0

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha} | self._linear_params()
