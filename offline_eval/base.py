"""The estimator interface and its value types.

The estimand is the expected total reward of a slate, ``V = E[sum_k r_k]``. A slot's reward may depend on the
items in it and in the slots before it, so slot ``k`` is reweighted by the prefix ratio
``W_k = prod_{j<=k} pi(a_j | a_<j) / mu(a_j | a_<j)`` of the target (pi) and logging (mu) conditional
propensities, which are exactly what Scout logs. Every estimator here is a sum over slots of a ratio of means,
``V = sum_k mean_i(num_ik) / mean_i(den_ik)``; a subclass fills :meth:`Estimator.terms`, and the bootstrap,
shared, resamples decisions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class SlateData:
    """Logged slates with a target policy's probabilities, padded to S slots.

    Parameters
    ----------
    logged_propensity, target_propensity
        n-by-S conditional probabilities of the logged item at each slot under the logging and target policy.
    reward
        n-by-S rewards.
    mask
        n-by-S booleans: the slot was served.
    logged_features
        n-by-S-by-F features of the logged items (for reward models).
    target_features
        n-by-S-by-F expected features of slot k's item under the target, given the logged prefix.
    """

    logged_propensity: np.ndarray
    target_propensity: np.ndarray
    reward: np.ndarray
    mask: np.ndarray
    logged_features: np.ndarray
    target_features: np.ndarray

    def __post_init__(self) -> None:
        shape = self.mask.shape
        if len(shape) != 2:
            raise ValueError(f"mask must be n-by-S, got shape {shape}")
        for name in ("logged_propensity", "target_propensity", "reward"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(self, name).shape}")
        for name in ("logged_features", "target_features"):
            if getattr(self, name).shape[:2] != shape or getattr(self, name).ndim != 3:
                raise ValueError(f"{name} must be n-by-S-by-F with n-by-S = {shape}")
        if (self.logged_propensity[self.mask] <= 0).any():
            raise ValueError("logged_propensity must be positive on served slots")

    @property
    def n(self) -> int:
        """Number of decisions."""
        return int(self.mask.shape[0])

    def prefix_weights(self) -> np.ndarray:
        """n-by-S prefix importance weights ``W_k``; zero on unserved slots."""
        ratio = np.where(self.mask, self.target_propensity / np.where(self.mask, self.logged_propensity, 1.0), 1.0)
        return np.cumprod(ratio, axis=1) * self.mask


@dataclass(frozen=True)
class Estimate:
    """A point estimate of the expected slate reward with a bootstrap interval."""

    estimator: str
    value: float
    lower: float
    upper: float
    level: float
    n: int


class Estimator(ABC):
    """Off-policy value estimator over :class:`SlateData`."""

    name: ClassVar[str]

    @abstractmethod
    def terms(self, data: SlateData) -> tuple[np.ndarray, np.ndarray]:
        """Per-decision numerator and denominator terms, each n-by-S."""

    def estimate(self, data: SlateData, bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
        """Point estimate and percentile bootstrap interval from ``bootstrap`` resamples of the decisions."""
        if data.n == 0:
            raise ValueError("no decisions to evaluate")
        num, den = self.terms(data)
        value = _ratio_sum(num.sum(axis=0), den.sum(axis=0))
        rng = np.random.default_rng(seed)
        draws = np.empty(bootstrap)
        for start in range(0, bootstrap, 100):
            size = min(100, bootstrap - start)
            counts = rng.multinomial(data.n, np.full(data.n, 1.0 / data.n), size=size).astype(np.float64)
            draws[start : start + size] = _ratio_sum(counts @ num, counts @ den)
        alpha = (1.0 - level) / 2.0
        lower, upper = np.quantile(draws, [alpha, 1.0 - alpha])
        return Estimate(self.name, float(value), float(lower), float(upper), level, data.n)


def _ratio_sum(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Sum over slots (last axis) of num/den, where a slot with zero denominator counts zero."""
    safe = np.where(den != 0, den, 1.0)
    return np.where(den != 0, num / safe, 0.0).sum(axis=-1)
