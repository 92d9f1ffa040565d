"""Policies over the linear reward model of :mod:`bandits.ridge`: shared terms, item/creator terms, position."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import CandidateBatch, Candidates, Exposure, FeatureParts, Policy
from bandits.features import folded_weights
from bandits.ridge import ArmTerms, RidgeRegression, examination

Arms = tuple[np.ndarray, np.ndarray] | None


class LinearPolicy(Policy):
    """A policy whose score table comes from the linear reward model.

    Subclasses implement :meth:`linear_table` (the score table from features and, when the candidates carry ids
    and ``arm_buckets`` is set, their item/creator bucket numbers) and may override :meth:`slot_probabilities`.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    l2
        Ridge penalty of the shared model.
    arm_buckets
        Hashed buckets for item and creator terms; 0 turns them off.
    arm_l2
        Prior precision of each item/creator term.
    position_model
        How a slot's examination weights a learned reward: ``"dcg"`` (``1 / log2(k + 2)``) or ``"none"``.
    exposure
        Exposure settings.
    """

    batched = True
    #: Whether :meth:`parts_table` scores from the feature parts alone (policies that draw parameters do not).
    factored = True

    def __init__(
        self,
        feature_dim: int,
        l2: float = 1.0,
        arm_buckets: int = 0,
        arm_l2: float = 1.0,
        position_model: str = "dcg",
        exposure: Exposure | None = None,
    ) -> None:
        super().__init__(feature_dim, exposure)
        examination(np.zeros(1), position_model)  # validates the name
        self.position_model = position_model
        self.model = RidgeRegression(feature_dim, l2)
        self.arms = ArmTerms(arm_buckets, arm_l2) if arm_buckets else None
        if self.exposure.optimism and self.arms is None:
            raise ValueError("optimism needs item and creator terms: set arm_buckets > 0")

    # -- scoring -----------------------------------------------------------------------------------------------

    def linear_table(self, features: np.ndarray, arms: Arms, parts: FeatureParts | None = None) -> np.ndarray:
        """Score table from features (..., K, F), bucket numbers (..., K) or None, and optionally the parts."""
        return self.mean(features, arms)

    def parts_table(self, parts: FeatureParts, arms: Arms) -> np.ndarray:
        """Score table from the feature parts of one decision or of n (leading axes); :meth:`parts_mean` here."""
        return self.parts_mean(parts, arms)

    def parts_mean(self, parts: FeatureParts, arms: Arms) -> np.ndarray:
        """Predicted relevance from the parts, without the features: ``V w + theta_bias``, ``w = sum_b W_b theta_b``.

        ``W`` are the request's block weights (:func:`bandits.features.folded_weights`): the same numbers as
        :meth:`mean` of the built features, up to rounding.
        """
        theta = self.model.theta
        w = folded_weights(parts.query, parts.context, theta[:-1])
        mean = np.einsum("...kd,...d->...k", np.asarray(parts.items, dtype=np.float64), w) + theta[-1]
        if arms is not None and self.arms is not None:
            mean = mean + self.arms.bias(*arms)
        return np.asarray(mean, dtype=np.float64)

    def table(self, candidates: Candidates) -> np.ndarray:
        """The score table, from the candidates' parts when they have them (their features stay unbuilt)."""
        if candidates.parts is None or not self.factored:
            return super().table(candidates)
        self._check(candidates)
        arms = self._arms(candidates.item_ids, candidates.creator_ids)
        return self._weighted(self._optimistic(self.parts_table(candidates.parts, arms), arms), candidates.emerging)

    def batch_table(self, batch: CandidateBatch) -> np.ndarray:
        """Score tables of n decisions, from the batch's parts when it has them (its features stay unbuilt)."""
        if batch.parts is None or not self.factored:
            return super().batch_table(batch)
        arms = self._arms(batch.item_ids, batch.creator_ids)
        return self._optimistic(self.parts_table(batch.parts, arms), arms)

    def mean(self, features: np.ndarray, arms: Arms) -> np.ndarray:
        """Predicted relevance (reward at examination 1)."""
        mean = self.model.predict(features)
        if arms is not None and self.arms is not None:
            mean = mean + self.arms.bias(*arms)
        return np.asarray(mean, dtype=np.float64)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The score table without item/creator terms, averaged over draws for policies that draw."""
        table = self.linear_table(features, None)
        return table if table.ndim == features.ndim - 1 else table.mean(axis=-2)

    def candidate_table(
        self,
        features: np.ndarray,
        item_ids: np.ndarray | None,
        creator_ids: np.ndarray | None,
        parts: FeatureParts | None = None,
    ) -> np.ndarray:
        """Score table with item/creator terms and optimism where the ids are known."""
        arms = self._arms(item_ids, creator_ids)
        return self._optimistic(self.linear_table(features, arms, parts), arms)

    def _optimistic(self, table: np.ndarray, arms: Arms) -> np.ndarray:
        if arms is not None and self.arms is not None and self.exposure.optimism:
            bonus = self.exposure.optimism * self.arms.bonus(*arms)
            table = table + (bonus[..., None, :] if table.ndim > bonus.ndim else bonus)
        return table

    def _arms(self, item_ids: np.ndarray | None, creator_ids: np.ndarray | None) -> Arms:
        if self.arms is None or item_ids is None or creator_ids is None:
            return None
        return self.arms.slots(item_ids, creator_ids)

    # -- learning ----------------------------------------------------------------------------------------------

    def learn(
        self,
        features: np.ndarray,
        rewards: np.ndarray,
        slots: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        creator_ids: np.ndarray | None = None,
    ) -> None:
        """Learn from m served items: the fast path for the learner.

        Parameters
        ----------
        features
            m by F features of the served items.
        rewards
            m rewards.
        slots
            m slot numbers (0 = top); with ``position_model="dcg"`` the model fits ``reward ~ e_slot * relevance``.
            None treats every item as examined.
        item_ids, creator_ids
            m ids, for the item/creator terms (ignored when ``arm_buckets`` is 0 or either is None).
        """
        X = np.asarray(features, dtype=np.float64)
        y = np.asarray(rewards, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.feature_dim or y.shape != (X.shape[0],):
            raise ValueError(f"learn needs m-by-{self.feature_dim} features and m rewards, got {X.shape}, {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("features and rewards must be finite")
        e = np.ones(len(y)) if slots is None else examination(np.asarray(slots), self.position_model)
        arms = self._arms(item_ids, creator_ids)
        target = y
        if arms is not None and self.arms is not None:
            residual = y - e * (self.model.predict(X) + self.arms.bias(*arms))
            self.arms.update(arms[0], arms[1], e, residual)
            target = y - e * self.arms.bias(*arms)
        self.model.update(X * e[:, None], target)
        self._changed()

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Fit the shared model on m served items (no slot, no ids)."""
        self.learn(features, rewards)

    def update_batch(
        self, batch: CandidateBatch, served: np.ndarray, rewards: np.ndarray, propensities: np.ndarray | None = None
    ) -> None:
        """Learn from n joined decisions: served items with their slots and ids (propensities unused: on-policy)."""
        served = np.asarray(served, dtype=np.int64)
        rows, slots = np.nonzero(served >= 0)
        cols = served[rows, slots]
        self.learn(
            batch.features[rows, cols],
            np.asarray(rewards, dtype=np.float64)[rows, slots],
            slots,
            None if batch.item_ids is None else batch.item_ids[rows, cols],
            None if batch.creator_ids is None else batch.creator_ids[rows, cols],
        )

    def _changed(self) -> None:
        """Called after the model changed (subclasses refresh caches)."""

    # -- state -------------------------------------------------------------------------------------------------

    def _linear_params(self) -> dict[str, Any]:
        return {
            "l2": self.model.l2,
            "arm_buckets": 0 if self.arms is None else self.arms.buckets,
            "arm_l2": 1.0 if self.arms is None else self.arms.l2,
            "position_model": self.position_model,
        }

    def _state(self) -> dict[str, np.ndarray]:
        return self.model.state() | ({} if self.arms is None else self.arms.state())

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.model.load(arrays)
        if self.arms is not None:
            self.arms.load(arrays)
        self._changed()


def softmax(scores: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Softmax of ``scores`` over the available candidates (broadcasts over leading axes; zero rows stay zero)."""
    masked = np.where(available, scores, -np.inf)
    top = masked.max(axis=-1, keepdims=True)
    weights = np.where(available, np.exp(masked - np.where(np.isfinite(top), top, 0.0)), 0.0)
    return weights / np.maximum(weights.sum(axis=-1, keepdims=True), 1e-300)
