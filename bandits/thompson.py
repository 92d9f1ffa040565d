"""Linear Thompson sampling over a fixed set of posterior draws, so its propensities are exact.

Each slot is drawn by picking one of ``draws`` posterior samples uniformly at random and taking the best available
candidate under it. The samples are ``theta + scale * L z_m`` (``A^-1 = L L^T``) and, with item/creator terms,
``b + scale * sqrt(variance) * w_m``, where the standard normals ``z_m`` and ``w_m`` are fixed by ``draw_seed``
(common random numbers): a slot's distribution is therefore a deterministic function of the model and the
candidates, namely the share of the samples under which each candidate wins. That is exactly the probability
used to sample, so the logged propensity is exact and offline replay recomputes it.

Against idealized Thompson sampling (infinitely many draws) each slot's probability carries Monte-Carlo error:
standard error ``sqrt(p (1 - p) / draws)``, at most ``0.5 / sqrt(draws)`` (0.05 at the default 100 draws). A
candidate that wins under no draw has probability 0 unless the exposure ``floor`` is set, which then guarantees
``floor / available`` to every available candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure, FeatureParts
from bandits.linear import Arms, LinearPolicy

#: Rows of the per-draw noise table for item/creator terms (buckets share rows modulo this size).
_ARM_NOISE_ROWS = 4096


class LinearThompson(LinearPolicy):
    """Linear Thompson sampling as a uniform mixture over ``draws`` fixed posterior draws.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    scale
        Posterior scale ``v`` (samples are ``theta + v * L z``), non-negative.
    draws
        Number of posterior draws M, at least 1.
    draw_seed
        Seed of the standard normals behind the draws.
    l2, arm_buckets, arm_l2, position_model, exposure
        See :class:`bandits.linear.LinearPolicy`.
    """

    name = "thompson"
    factored = False

    def __init__(
        self,
        feature_dim: int,
        scale: float = 0.5,
        draws: int = 100,
        draw_seed: int = 0,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be non-negative, got {scale}")
        if int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws}")
        self.scale, self.draws, self.draw_seed = float(scale), int(draws), int(draw_seed)
        rng = np.random.default_rng(self.draw_seed)
        self._z = rng.standard_normal((feature_dim, self.draws))
        self._w = rng.standard_normal((2, self.draws, _ARM_NOISE_ROWS))
        self._deviation = np.zeros((feature_dim, self.draws))
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        self._changed()

    def _changed(self) -> None:
        L = np.linalg.cholesky(self.model.A_inv)
        self._deviation = self.scale * (L @ self._z)

    def linear_table(self, features: np.ndarray, arms: Arms, parts: FeatureParts | None = None) -> np.ndarray:
        """Draws by candidates: (..., M, K) scores, one row per posterior draw."""
        mean = self.mean(features, arms)
        table = np.swapaxes(features @ self._deviation, -1, -2) + mean[..., None, :]
        if arms is not None and self.arms is not None and self.scale:
            items, creators = arms
            sd = self.scale * np.sqrt(1.0 / (self.arms.n[0, items] + self.arms.l2))
            sd_c = self.scale * np.sqrt(1.0 / (self.arms.n[1, creators] + self.arms.l2))
            noise = sd[..., None, :] * np.moveaxis(self._w[0][:, items % _ARM_NOISE_ROWS], 0, -2)
            noise += sd_c[..., None, :] * np.moveaxis(self._w[1][:, creators % _ARM_NOISE_ROWS], 0, -2)
            table = table + noise
        return np.asarray(table, dtype=np.float64)

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Share of the draws under which each available candidate has the best score."""
        masked = np.where(available[..., None, :], scores, -np.inf)
        winners = masked.argmax(axis=-1)
        k = scores.shape[-1]
        counts = (winners[..., None] == np.arange(k)).sum(axis=-2)
        return np.asarray(counts / self.draws, dtype=np.float64) * available

    def _params(self) -> dict[str, Any]:
        return {"scale": self.scale, "draws": self.draws, "draw_seed": self.draw_seed} | self._linear_params()
