"""LinUCB (Li et al., 2010): rank by an upper confidence bound of the linear reward model."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Exposure, FeatureParts
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
        self._blocks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None
        super().__init__(feature_dim, l2, arm_buckets, arm_l2, position_model, exposure)
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)

    def linear_table(self, features: np.ndarray, arms: Arms, parts: FeatureParts | None = None) -> np.ndarray:
        """Upper confidence bound of each candidate's relevance; the width from ``parts`` when given."""
        mean = self.mean(features, arms)
        if not self.alpha:
            return mean
        if parts is not None and features.ndim == 2:
            variance = self._parts_variance(parts)
        else:
            variance = ((features @ self.model.A_inv) * features).sum(axis=-1)
        return self._bound(mean, variance, arms)

    def parts_table(self, parts: FeatureParts, arms: Arms) -> np.ndarray:
        """Upper confidence bound from the feature parts of one decision or n, without the features."""
        mean = self.parts_mean(parts, arms)
        return self._bound(mean, self._parts_variance(parts), arms) if self.alpha else mean

    def _bound(self, mean: np.ndarray, variance: np.ndarray, arms: Arms) -> np.ndarray:
        if arms is not None and self.arms is not None:
            variance = variance + self.arms.variance(*arms)
        return np.asarray(mean + self.alpha * np.sqrt(np.maximum(variance, 0.0)), dtype=np.float64)

    def _parts_variance(self, parts: FeatureParts) -> np.ndarray:
        """``x^T A^-1 x`` of every candidate from its item vector ``v``: O(K d^2) per decision, not O(K F^2).

        The feature blocks are ``q * v`` and ``s_b v`` with scalars ``s = [1, c_1, ..., c_C]``
        (:func:`bandits.features.block_weights`), so with ``G = A^-1`` in d-by-d blocks (block 0 is ``q * v``,
        blocks ``b >= 1`` the scalar ones) and its bias column in d-blocks ``g_b`` and last entry ``g``:

            x^T G x = v^T M v + 2 v.(q * g_0 + sum_b s_b g_b) + g,
            M = diag(q) G_00 diag(q) + 2 diag(q) P + R,  P = sum_b s_b G_0b,  R = sum_bc s_b s_c G_bc.

        ``P`` and ``R`` are matrix products of ``s`` with the cached blocks; ``M`` is built once per decision.
        """
        q = np.asarray(parts.query, dtype=np.float64)
        V = np.asarray(parts.items)  # widened to float64 a chunk at a time, in cache
        c = np.asarray(parts.context, dtype=np.float64)
        if q.ndim == 1:
            return self._variance(q, V, c)
        # a few dozen decisions at a time, so that their d-by-d products stay in cache
        step = _VARIANCE_CHUNK
        chunks = [self._variance(q[i : i + step], V[i : i + step], c[i : i + step]) for i in range(0, len(q), step)]
        return np.concatenate(chunks) if chunks else np.zeros(V.shape[:-1])

    def _variance(self, q: np.ndarray, V: np.ndarray, c: np.ndarray) -> np.ndarray:
        V = np.asarray(V, dtype=np.float64)
        lead, d = q.shape[:-1], q.shape[-1]
        s = np.empty((*lead, 1 + c.shape[-1]))
        s[..., 0], s[..., 1:] = 1.0, c
        if self._blocks is None:
            self._blocks = _variance_blocks(self.model.A_inv, s.shape[-1], d)
        G00, PT2, R, g_q, g_s, g0 = self._blocks
        # M transposed (R and G_00 are symmetric), M^T_ij = R_ij + q_j (2 P_ji + q_i G00_ij), so that V @ M^T is
        # one contiguous (batched) product; built in place, a few passes over the n d-by-d matrices.
        MT = G00 * q[..., :, None]
        MT += (s @ PT2).reshape(*lead, d, d)
        MT *= q[..., None, :]
        MT += ((s[..., :, None] * s[..., None, :]).reshape(*lead, -1) @ R).reshape(*lead, d, d)
        quad = np.einsum("...ki,...ki->...k", V @ MT, V)
        linear = np.einsum("...kd,...d->...k", V, q * g_q + s @ g_s)
        return np.asarray(quad + 2.0 * linear + g0, dtype=np.float64)

    def _changed(self) -> None:
        self._blocks = None

    def greedy_mixture(self) -> float | None:
        """0: LinUCB's slots are greedy on the upper confidence bound."""
        return 0.0

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha} | self._linear_params()


_VARIANCE_CHUNK = 64


def _variance_blocks(
    G: np.ndarray, scalars: int, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``G_00``, ``2 G_b0`` (``G_b0 = G_0b^T``) and ``G_bc`` of the scalar blocks flattened, and the bias blocks."""
    blocks = 1 + scalars
    G4 = G[: blocks * d, : blocks * d].reshape(blocks, d, blocks, d).transpose(0, 2, 1, 3)
    PT2 = 2.0 * G4[1:, 0].reshape(scalars, d * d)
    R = np.ascontiguousarray(G4[1:, 1:].reshape(scalars * scalars, d * d))
    g = G[: blocks * d, -1].reshape(blocks, d)
    return np.ascontiguousarray(G4[0, 0]), PT2, R, g[0].copy(), np.ascontiguousarray(g[1:]), float(G[-1, -1])
