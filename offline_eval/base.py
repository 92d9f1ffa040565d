"""The estimator interface and its value types.

The estimand is the expected total reward of a slate, ``V = E[sum_k r_k]``, where a decision's slate length is
set by the request (not by the policy) and an unserved slot earns nothing. A slot's reward may depend on the items
in it and in the slots before it, so slot ``k`` is reweighted by the prefix ratio
``W_k = prod_{j<=k} pi(a_j | a_<j) / mu(a_j | a_<j)`` of the target (pi) and logging (mu) conditional
propensities, which are exactly what Scout logs.

Every estimator here is a sum of ratios of means over J components (usually one per slot),
``V = sum_j mean_i(num_ij) / mean_i(den_ij)``. A subclass fills :meth:`Estimator.terms`; intervals, the bootstrap
and the Beam pipeline all work on sums of those terms (:mod:`offline_eval.statistics`), so they are mergeable and
stream in bounded memory.

Self-normalizing estimators divide slot ``k`` by the mean *extended* weight ``W~_k``: the prefix ratio carried
through the slots a decision did not serve (their ratio is one, since slate length does not depend on the
policy). ``E[W~_k] = 1`` for every decision, whereas the zeroed ``W_k`` only averages to the share of decisions
that served slot ``k``; dividing by it was the old SNIPS bug on slates of varying length.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from bandits.features import build_features_batch


class LogError(ValueError):
    """A log file is unreadable or malformed; the message names the file, the column and the first bad row."""


@dataclass(frozen=True)
class SlateFeatureParts:
    """The reward model's features of n logged slates in factored form (Scout's layout, :mod:`bandits.features`).

    Features are linear in the item vector but for their bias column, so the logged item's features and the
    target's expected features at a slot both follow from the query, the context and one d-dimensional vector per
    slot: the logged item's, and the target's expectation ``sum_k p_k v_k`` with the bias ``sum_k p_k``.

    Parameters
    ----------
    query
        n-by-d query vectors.
    context
        n-by-C context values.
    logged_items
        n-by-S-by-d vectors of the logged items (anything finite on unserved slots; float32 index vectors may stay
        float32).
    target_items
        n-by-S-by-d expected item vectors under the target (zero on unserved slots).
    target_mass
        n-by-S total target probability behind ``target_items`` (the bias column; zero on unserved slots).
    """

    query: np.ndarray
    context: np.ndarray
    logged_items: np.ndarray
    target_items: np.ndarray
    target_mass: np.ndarray

    def take(self, rows: np.ndarray | slice) -> SlateFeatureParts:
        """The decisions at ``rows``."""
        return SlateFeatureParts(
            self.query[rows],
            self.context[rows],
            self.logged_items[rows],
            self.target_items[rows],
            self.target_mass[rows],
        )


@dataclass(frozen=True, init=False)
class SlateData:
    """Logged slates with a target policy's probabilities, padded to S slots.

    Parameters
    ----------
    logged_propensity, target_propensity
        n-by-S conditional probabilities of the logged item at each slot under the logging and target policy
        (given the logged items in earlier slots).
    reward
        n-by-S rewards; zero where a slot was not served.
    mask
        n-by-S booleans: the slot was served. Served slots come first in every row.
    logged_features
        n-by-S-by-F features of the logged items (for reward models); None when ``parts`` are given, which build
        them when first read (the estimators that use no reward model never do; the cross-fitted model builds
        them a chunk at a time).
    target_features
        n-by-S-by-F expected features of slot k's item under the target, given the logged prefix; None likewise.
    reward_range
        Bounds of one slot's reward (for flagging impossible estimates); defaults to the observed range.
    parts
        The features in factored form (:class:`SlateFeatureParts`), instead of the two arrays above.
    """

    logged_propensity: np.ndarray
    target_propensity: np.ndarray
    reward: np.ndarray
    mask: np.ndarray
    reward_range: tuple[float, float] | None
    parts: SlateFeatureParts | None

    def __init__(
        self,
        logged_propensity: np.ndarray,
        target_propensity: np.ndarray,
        reward: np.ndarray,
        mask: np.ndarray,
        logged_features: np.ndarray | None,
        target_features: np.ndarray | None,
        reward_range: tuple[float, float] | None = None,
        parts: SlateFeatureParts | None = None,
    ) -> None:
        mask = np.asarray(mask, dtype=bool)
        shape = mask.shape
        if len(shape) != 2:
            raise ValueError(f"mask must be n-by-S, got shape {shape}")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "reward_range", reward_range)
        object.__setattr__(self, "parts", parts)
        given = {"logged_propensity": logged_propensity, "target_propensity": target_propensity, "reward": reward}
        for name, raw in given.items():
            value = np.asarray(raw, dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (n-by-S), got {value.shape}")
            object.__setattr__(self, name, value)
        if logged_features is None or target_features is None:
            if parts is None:
                raise ValueError("give logged_features and target_features, or the parts to build them from")
            n, s = shape
            d = np.shape(parts.query)[-1]
            if (
                np.shape(parts.query) != (n, d)
                or np.shape(parts.context)[:1] != (n,)
                or np.shape(parts.logged_items) != (n, s, d)
                or np.shape(parts.target_items) != (n, s, d)
                or np.shape(parts.target_mass) != (n, s)
            ):
                raise ValueError(
                    f"parts do not fit n-by-S = {shape} slates: {[np.shape(a) for a in vars(parts).values()]}"
                )
        else:
            self.__dict__["logged_features"] = self._checked("logged_features", logged_features)
            self.__dict__["target_features"] = self._checked("target_features", target_features)
            if self.logged_features.shape[2] != self.target_features.shape[2]:
                raise ValueError("logged_features and target_features must have the same number of feature columns F")
        served = self.logged_propensity[mask]
        if ((served <= 0) | (served > 1) | ~np.isfinite(served)).any():
            raise ValueError("logged_propensity must be in (0, 1] on served slots")
        target = self.target_propensity[mask]
        if ((target < 0) | (target > 1 + 1e-9) | ~np.isfinite(target)).any():
            raise ValueError("target_propensity must be in [0, 1] on served slots")
        if not np.isfinite(self.reward[mask]).all():
            raise ValueError("reward must be finite on served slots")
        if shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("mask must serve a prefix of the slots in every row (no gaps)")
        if self.reward_range is not None and not self.reward_range[0] <= self.reward_range[1]:
            raise ValueError(f"reward_range must be (low, high) with low <= high, got {self.reward_range}")

    def _checked(self, name: str, features: np.ndarray) -> np.ndarray:
        value = np.asarray(features, dtype=np.float64)
        if value.ndim != 3 or value.shape[:2] != self.mask.shape:
            raise ValueError(f"{name} must be n-by-S-by-F with n-by-S = {self.mask.shape}, got {value.shape}")
        return value

    @functools.cached_property
    def logged_features(self) -> np.ndarray:
        """The n-by-S-by-F features of the logged items (zero on unserved slots)."""
        assert self.parts is not None
        p = self.parts
        out = build_features_batch(p.query, p.logged_items, p.context)
        out *= self.mask[:, :, None]
        return self._checked("logged_features", out)

    @functools.cached_property
    def target_features(self) -> np.ndarray:
        """The n-by-S-by-F expected features under the target (zero on unserved slots)."""
        assert self.parts is not None
        p = self.parts
        out = build_features_batch(p.query, p.target_items, p.context)
        out[:, :, -1] = p.target_mass
        return self._checked("target_features", out)

    @property
    def features_built(self) -> bool:
        """Whether the feature arrays exist (given, or built from the parts)."""
        return "logged_features" in self.__dict__ and "target_features" in self.__dict__

    @property
    def n(self) -> int:
        """Number of decisions."""
        return int(self.mask.shape[0])

    @property
    def slots(self) -> int:
        """Number of slots S (the longest slate)."""
        return int(self.mask.shape[1])

    def ratios(self) -> np.ndarray:
        """n-by-S per-slot ratios ``pi(a_k | a_<k) / mu(a_k | a_<k)``; one on unserved slots (read-only)."""
        return self._ratios

    def extended_weights(self) -> np.ndarray:
        """n-by-S prefix weights ``W~_k`` carried through unserved slots (mean one under the logging policy).

        Computed once per data (every estimator and diagnostic asks for them) and read-only.
        """
        return self._extended

    @functools.cached_property
    def _ratios(self) -> np.ndarray:
        safe = np.where(self.mask, self.logged_propensity, 1.0)
        out = np.where(self.mask, self.target_propensity / safe, 1.0)
        out.setflags(write=False)
        return out

    @functools.cached_property
    def _extended(self) -> np.ndarray:
        out = np.cumprod(self._ratios, axis=1)
        out.setflags(write=False)
        return out

    def prefix_weights(self) -> np.ndarray:
        """n-by-S prefix importance weights ``W_k``; zero on unserved slots."""
        return self.extended_weights() * self.mask

    def previous_weights(self) -> np.ndarray:
        """n-by-S prefix weights of the slots before k, ``W_{k-1}`` (one for slot 0); zero on unserved slots."""
        ext = self.extended_weights()
        return np.hstack([np.ones((self.n, 1)), ext[:, :-1]]) * self.mask

    def slate_weights(self) -> np.ndarray:
        """Whole-slate weights, one per decision: the product of every served slot's ratio."""
        return self.extended_weights()[:, -1] if self.slots else np.ones(self.n)

    def lengths(self) -> np.ndarray:
        """Slate length of each decision."""
        return self.mask.sum(axis=1)

    def value_bounds(self) -> tuple[float, float]:
        """The range any policy's expected total reward can take on these requests, from the reward range."""
        low, high = self.reward_range if self.reward_range is not None else self.observed_reward_range()
        mean_length = float(self.lengths().mean()) if self.n else 0.0
        return low * mean_length, high * mean_length

    def observed_reward_range(self) -> tuple[float, float]:
        """The smallest and largest reward on a served slot."""
        served = self.reward[self.mask]
        return (float(served.min()), float(served.max())) if served.size else (0.0, 0.0)

    def take(self, rows: np.ndarray | slice) -> SlateData:
        """The decisions at ``rows`` (indices, a boolean mask or a slice; features stay unbuilt if they are)."""
        lazy = self.parts is not None and not self.features_built
        return SlateData(
            self.logged_propensity[rows],
            self.target_propensity[rows],
            self.reward[rows],
            self.mask[rows],
            None if lazy else self.logged_features[rows],
            None if lazy else self.target_features[rows],
            self.reward_range if self.reward_range is not None else self.observed_reward_range(),
            self.parts.take(rows) if lazy and self.parts is not None else None,
        )


@dataclass(frozen=True)
class Terms:
    """Per-decision numerator and denominator terms: the estimate is ``sum_j sum_i num_ij / sum_i den_ij``.

    Parameters
    ----------
    num, den
        n-by-J float arrays.
    """

    num: np.ndarray
    den: np.ndarray

    def __post_init__(self) -> None:
        num, den = np.asarray(self.num, dtype=np.float64), np.asarray(self.den, dtype=np.float64)
        if num.ndim != 2 or num.shape != den.shape:
            raise ValueError(f"num and den must be n-by-J arrays of one shape, got {num.shape} and {den.shape}")
        object.__setattr__(self, "num", num)
        object.__setattr__(self, "den", den)

    def value(self) -> float:
        """The point estimate."""
        return float(ratio_sum(self.num.sum(axis=0), self.den.sum(axis=0)))


@dataclass(frozen=True)
class RewardPredictions:
    """A reward model's predictions on the logged slates.

    Parameters
    ----------
    logged
        n-by-S predicted reward of the logged item at each slot (``q``).
    target
        n-by-S expected predicted reward of slot k under the target given the logged prefix (``qbar``).
    """

    logged: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        if self.logged.shape != self.target.shape or self.logged.ndim != 2:
            shapes = f"{self.logged.shape} and {self.target.shape}"
            raise ValueError(f"logged and target must be n-by-S arrays of one shape, got {shapes}")


class RewardModel(Protocol):
    """A reward model a user supplies: fit on features and rewards, predict rewards from features.

    ``qbar`` is the model applied to the target's expected features, so the model should be linear in the features
    (as the default ridge model is) for DM/DR's baseline to be the target's expected prediction.
    """

    def fit(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Fit on m rows: m-by-F features, m rewards."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predict m rewards from m-by-F features."""


RewardModelFactory = Callable[[], RewardModel]


@dataclass(frozen=True)
class Estimate:
    """A point estimate of the expected slate reward with an interval.

    Parameters
    ----------
    estimator
        The estimator's name.
    value
        Point estimate.
    lower, upper
        Interval at ``level``.
    level
        Nominal coverage of the interval.
    n
        Decisions used.
    interval
        How the interval was made (``normal``, ``bootstrap``).
    std_error
        Delta-method standard error of the estimate.
    flags
        Reasons not to trust this estimate (for example, a value outside what the reward range allows).
    """

    estimator: str
    value: float
    lower: float
    upper: float
    level: float
    n: int
    interval: str = "normal"
    std_error: float = float("nan")
    flags: tuple[str, ...] = field(default_factory=tuple)


class Estimator(ABC):
    """Off-policy value estimator over :class:`SlateData`.

    Subclasses set :attr:`name` and fill :meth:`terms`; those that need a reward model set :attr:`uses_model`.
    """

    name: ClassVar[str]
    uses_model: ClassVar[bool] = False

    @abstractmethod
    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Per-decision numerator and denominator terms, each n-by-J."""

    def estimate(
        self,
        data: SlateData,
        bootstrap: int = 0,
        level: float = 0.95,
        seed: int = 0,
        predictions: RewardPredictions | None = None,
    ) -> Estimate:
        """Point estimate with a normal interval, or a Poisson bootstrap interval when ``bootstrap`` > 0."""
        from offline_eval.statistics import estimate_from_terms

        if data.n == 0:
            raise ValueError("no decisions to evaluate")
        if self.uses_model and predictions is None:
            from offline_eval.reward_model import cross_fit

            predictions = cross_fit(data, seed=seed)
        terms = self.terms(data, predictions)
        return estimate_from_terms(self.name, terms, data.value_bounds(), bootstrap, level, seed)


def ratio_sum(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Sum over components (last axis) of num/den, where a component with zero denominator counts zero."""
    safe = np.where(den != 0, den, 1.0)
    return np.where(den != 0, num / safe, 0.0).sum(axis=-1)


def require(predictions: RewardPredictions | None, name: str) -> RewardPredictions:
    """The reward predictions an estimator needs, or a clear error."""
    if predictions is None:
        raise ValueError(f"estimator {name!r} needs reward predictions (see offline_eval.reward_model.cross_fit)")
    return predictions
