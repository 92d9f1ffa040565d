"""The policy interface: score K candidates, sample a slate slot by slot, report exact propensities.

A policy fills a few hooks: :meth:`Policy.scores` (one number per candidate), optionally
:meth:`Policy.score_table` (several score rows, for policies that mix over posterior draws) and
:meth:`Policy.slot_probabilities` (how a slot's item is drawn from the still-available candidates; greedy by
default). Everything else is shared, so online serving and offline evaluation use the very same probabilities:

- slate sampling (:meth:`Policy.rank`) and the probability of any logged slate (:meth:`Policy.slot_distributions`,
  and :meth:`Policy.replay_distributions` for n decisions at once, vectorized where the hooks broadcast);
- the exposure settings of :class:`Exposure`, applied to every slot after the policy's own distribution: a
  minimum number or share of emerging-creator slots, a score bonus for emerging creators, optimism for little-seen
  items and creators, and a floor that gives every available candidate a minimum probability (so the logs support
  offline evaluation of any other policy);
- serialization without pickle.
"""

from __future__ import annotations

import io
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np

from bandits.features import build_features, build_features_batch

FORMAT_VERSION = 1

#: Rows of a replay batch processed at once by the vectorized path (bounds memory for score tables with draws).
REPLAY_CHUNK = 512


class PolicyStateError(ValueError):
    """A serialized policy cannot be loaded (corrupt, or another policy's or format's state)."""


def _ids(value: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=object)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one id per candidate), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class FeatureParts:
    """What features were built from, for policies that score from the factored form.

    One decision has a query of d numbers, K item rows of d and C context values; a batch of n decisions has
    n-by-d queries, n-by-K-by-d items and n-by-C context values.

    Parameters
    ----------
    query
        Query content vector(s).
    items
        Candidate content vectors.
    context
        Context values, in configured key order.
    """

    query: np.ndarray
    items: np.ndarray
    context: np.ndarray

    @classmethod
    def of(cls, query: np.ndarray, items: np.ndarray, context: np.ndarray) -> FeatureParts:
        """The parts as float64 arrays; float32 items (index vectors) stay float32 and readers widen them exactly."""
        v = np.asarray(items)
        v = v if v.dtype in (np.float32, np.float64) else v.astype(np.float64)
        return cls(np.asarray(query, dtype=np.float64), v, np.asarray(context, dtype=np.float64))


class _DeferredFeatures:
    """Features given, or built from ``parts`` the first time something reads them; F without building them."""

    parts: FeatureParts | None

    @staticmethod
    def _build(query: np.ndarray, items: np.ndarray, context: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def features(self) -> np.ndarray:
        """The features (built from the parts on first use when they were not given)."""
        built: np.ndarray | None = self.__dict__.get("features")
        if built is None:  # no lock (functools.cached_property holds one per class on 3.11): a race builds twice
            assert self.parts is not None
            built = self.__dict__["features"] = self._checked(
                type(self)._build(self.parts.query, self.parts.items, self.parts.context)
            )
        return built

    @property
    def feature_dim(self) -> int:
        """F, without building the features."""
        if "features" in self.__dict__ or self.parts is None:
            return int(self.features.shape[-1])
        return (2 + int(np.shape(self.parts.context)[-1])) * int(np.shape(self.parts.items)[-1]) + 1

    def _checked(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True, init=False)
class Candidates(_DeferredFeatures):
    """The K candidates of one decision.

    Parameters
    ----------
    features
        Feature matrix, K rows (one per candidate) by F columns, from :func:`bandits.features.build_features`; or
        None when ``parts`` are given: then they are built from the parts the first time something reads
        :attr:`features` (policies that score from the parts never do).
    emerging
        K booleans: whether each candidate's creator is emerging.
    item_ids, creator_ids
        Optional K ids (strings); policies with item- and creator-level terms use them, others ignore them.
    parts
        Optional inputs the features are built from (:meth:`from_parts` sets them); a policy may score from them
        instead of ``features`` with the same result up to rounding.
    """

    emerging: np.ndarray
    item_ids: np.ndarray | None
    creator_ids: np.ndarray | None
    parts: FeatureParts | None

    @staticmethod
    def _build(query: np.ndarray, items: np.ndarray, context: np.ndarray) -> np.ndarray:
        return build_features(query, items, context)

    def __init__(
        self,
        features: np.ndarray | None,
        emerging: np.ndarray,
        item_ids: np.ndarray | None = None,
        creator_ids: np.ndarray | None = None,
        parts: FeatureParts | None = None,
    ) -> None:
        e = np.asarray(emerging, dtype=bool)
        if parts is not None:
            v = np.asarray(parts.items)
            q, c = np.asarray(parts.query), np.asarray(parts.context)
            if v.ndim != 2 or v.shape[0] == 0 or q.shape != v.shape[1:] or c.ndim != 1:
                raise ValueError(f"parts: query {q.shape}, items {v.shape} and context {c.shape} do not fit together")
            if not (np.isfinite(v).all() and np.isfinite(q).all() and np.isfinite(c).all()):
                raise ValueError("features must be finite")
            shape = v.shape[:1]
        elif features is None:
            raise ValueError("give features, or the parts to build them from")
        else:
            shape = np.shape(features)[:1]
        if e.shape != shape:
            raise ValueError(f"emerging must have one flag per candidate ({shape[0]}), got shape {e.shape}")
        object.__setattr__(self, "emerging", e)
        object.__setattr__(self, "item_ids", _ids(item_ids, e.shape, "item_ids"))
        object.__setattr__(self, "creator_ids", _ids(creator_ids, e.shape, "creator_ids"))
        object.__setattr__(self, "parts", parts)
        if features is not None:
            f = self._checked(features)
            if parts is not None and (f.shape[0] != shape[0] or f.shape[1] != self.feature_dim):
                raise ValueError(f"parts: items {np.shape(parts.items)} do not match features {f.shape}")
            self.__dict__["features"] = f

    @classmethod
    def from_parts(
        cls,
        query: np.ndarray,
        items: np.ndarray,
        context: np.ndarray,
        emerging: np.ndarray,
        item_ids: np.ndarray | None = None,
        creator_ids: np.ndarray | None = None,
    ) -> Candidates:
        """One decision's candidates from their parts, features deferred (:func:`bandits.features.build_features`).

        Policies that score from the parts (the linear ones) never build the K-by-F features.
        """
        return cls(None, emerging, item_ids, creator_ids, FeatureParts.of(query, items, context))

    def _checked(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"features must be a non-empty K-by-F matrix, got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features must be finite")
        return f

    @property
    def count(self) -> int:
        """Number of candidates K."""
        return int(self.emerging.shape[0])


@dataclass(frozen=True, init=False)
class CandidateBatch(_DeferredFeatures):
    """The candidates of n decisions, padded to a common K.

    Parameters
    ----------
    features
        n by K by F float64 features (padding rows may hold anything finite), or None when ``parts`` are given:
        then they are built from the parts the first time something reads :attr:`features` (policies that score
        from the parts never do).
    valid
        n by K booleans; False marks padding. Every decision has at least one valid candidate.
    emerging
        n by K booleans: whether each candidate's creator is emerging.
    item_ids, creator_ids
        Optional n by K object arrays of ids (None in padding cells is fine).
    parts
        Optional n-decision :class:`FeatureParts` the features are built from.
    """

    valid: np.ndarray
    emerging: np.ndarray
    item_ids: np.ndarray | None
    creator_ids: np.ndarray | None
    parts: FeatureParts | None

    @staticmethod
    def _build(query: np.ndarray, items: np.ndarray, context: np.ndarray) -> np.ndarray:
        return build_features_batch(query, items, context)

    def __init__(
        self,
        features: np.ndarray | None,
        valid: np.ndarray,
        emerging: np.ndarray,
        item_ids: np.ndarray | None = None,
        creator_ids: np.ndarray | None = None,
        parts: FeatureParts | None = None,
    ) -> None:
        v = np.asarray(valid, dtype=bool)
        e = np.asarray(emerging, dtype=bool)
        f = None if features is None else np.asarray(features, dtype=np.float64)
        if f is not None and f.ndim != 3:
            raise ValueError(f"features must be n-by-K-by-F, got shape {f.shape}")
        if parts is not None:
            n, k, d = np.shape(parts.items)
            if np.shape(parts.query) != (n, d) or np.shape(parts.context)[:1] != (n,) or np.ndim(parts.context) != 2:
                raise ValueError(
                    f"parts: queries {np.shape(parts.query)}, items {np.shape(parts.items)} and context "
                    f"{np.shape(parts.context)} do not describe the same n decisions"
                )
            shape = (n, k)
        elif f is not None:
            shape = f.shape[:2]
        else:
            raise ValueError("give features, or the parts to build them from")
        if v.shape != shape:
            raise ValueError(f"valid must be n-by-K = {shape}, got shape {v.shape}")
        if e.shape != shape:
            raise ValueError(f"emerging must be n-by-K = {shape}, got shape {e.shape}")
        if shape[0] and not v.any(axis=1).all():
            raise ValueError(f"valid: decision {int(np.argmin(v.any(axis=1)))} has no valid candidate")
        object.__setattr__(self, "valid", v)
        object.__setattr__(self, "emerging", e & v)
        object.__setattr__(self, "item_ids", _ids(item_ids, shape, "item_ids"))
        object.__setattr__(self, "creator_ids", _ids(creator_ids, shape, "creator_ids"))
        object.__setattr__(self, "parts", parts)
        if f is not None:
            self.__dict__["features"] = self._checked(f)

    @classmethod
    def from_parts(
        cls,
        queries: np.ndarray,
        items: np.ndarray,
        context: np.ndarray,
        valid: np.ndarray,
        emerging: np.ndarray,
        item_ids: np.ndarray | None = None,
        creator_ids: np.ndarray | None = None,
    ) -> CandidateBatch:
        """Build a batch from its parts (n-by-d queries, n-by-K-by-d items, n-by-C context), features deferred."""
        return cls(None, valid, emerging, item_ids, creator_ids, FeatureParts.of(queries, items, context))

    def _checked(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 3 or f.shape[:2] != self.valid.shape:
            raise ValueError(f"features must be n-by-K-by-F with n-by-K = {self.valid.shape}, got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features must be finite")
        return f

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def take(self, rows: np.ndarray | slice) -> CandidateBatch:
        """The decisions at ``rows`` (features stay deferred when they have not been built)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        built = "features" in self.__dict__
        parts = self.parts and FeatureParts(self.parts.query[rows], self.parts.items[rows], self.parts.context[rows])
        return CandidateBatch(
            self.features[rows] if built or parts is None else None,
            self.valid[rows],
            self.emerging[rows],
            pick(self.item_ids),
            pick(self.creator_ids),
            parts,
        )

    def row(self, i: int) -> tuple[Candidates, np.ndarray]:
        """Decision ``i``'s valid candidates, and their column numbers in the batch."""
        cols = np.flatnonzero(self.valid[i])
        return (
            Candidates(
                self.features[i, cols],
                self.emerging[i, cols],
                None if self.item_ids is None else self.item_ids[i, cols],
                None if self.creator_ids is None else self.creator_ids[i, cols],
            ),
            cols,
        )


@dataclass(frozen=True)
class Slate:
    """A ranked slate and the exact probabilities with which it was drawn.

    Parameters
    ----------
    indices
        n candidate indices, one per slot, in slot order.
    propensities
        n conditional probabilities: slot k's item given the items in slots before k.
    scores
        K policy scores, one per candidate (the mean over draws for policies that mix over draws).
    """

    indices: np.ndarray
    propensities: np.ndarray
    scores: np.ndarray

    @property
    def probability(self) -> float:
        """Joint probability of the whole slate (the product of the per-slot propensities)."""
        return float(np.prod(self.propensities))


@dataclass(frozen=True)
class Exposure:
    """Exposure settings shared by every policy, applied to each slot in this order.

    1. ``emerging_weight`` and ``optimism`` adjust the scores (relevance/exposure trade-off, optimism for
       items and creators with little data; optimism needs item/creator ids and a policy with per-arm terms).
    2. The quota: while the slots left are no more than the emerging slots still owed, and an emerging candidate
       is available, the slot is drawn from the available emerging candidates only.
    3. The floor: ``floor`` of each slot's mass is spread evenly over all available candidates, so every
       available candidate has probability at least ``floor / available`` (with a floor, a reserved slot goes
       to an emerging creator with probability at least ``1 - floor``).

    Parameters
    ----------
    floor
        Share of each slot's probability spread uniformly, in [0, 1).
    emerging_slots
        Minimum number of slots per slate for emerging creators (when eligible candidates exist).
    emerging_share
        Minimum share of a slate's slots for emerging creators, in [0, 1] (rounded up); the larger of the two wins.
    emerging_weight
        Added to the score of every emerging candidate (in the policy's score units, reward for linear models).
    optimism
        Score bonus ``optimism * (1 / sqrt(1 + n_item) + 1 / sqrt(1 + n_creator)) / 2`` for an item and creator
        with ``n`` (position-weighted) observations.
    """

    floor: float = 0.0
    emerging_slots: int = 0
    emerging_share: float = 0.0
    emerging_weight: float = 0.0
    optimism: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {self.floor}")
        if isinstance(self.emerging_slots, bool) or int(self.emerging_slots) != self.emerging_slots:
            raise ValueError(f"emerging_slots must be an integer, got {self.emerging_slots!r}")
        if self.emerging_slots < 0:
            raise ValueError(f"emerging_slots must be non-negative, got {self.emerging_slots}")
        if not 0.0 <= self.emerging_share <= 1.0:
            raise ValueError(f"emerging_share must be in [0, 1], got {self.emerging_share}")
        if not math.isfinite(self.emerging_weight):
            raise ValueError(f"emerging_weight must be finite, got {self.emerging_weight}")
        if not (math.isfinite(self.optimism) and self.optimism >= 0):
            raise ValueError(f"optimism must be finite and non-negative, got {self.optimism}")
        object.__setattr__(self, "floor", float(self.floor))
        object.__setattr__(self, "emerging_slots", int(self.emerging_slots))
        object.__setattr__(self, "emerging_share", float(self.emerging_share))
        object.__setattr__(self, "emerging_weight", float(self.emerging_weight))
        object.__setattr__(self, "optimism", float(self.optimism))

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The parameter names that belong to the exposure settings."""
        return frozenset(f.name for f in fields(cls))

    def required(self, num_slots: np.ndarray | int) -> np.ndarray:
        """Emerging slots owed in a slate of ``num_slots`` slots (capped at the slate size)."""
        n = np.asarray(num_slots, dtype=np.int64)
        by_share = np.ceil(self.emerging_share * n - 1e-9).astype(np.int64)
        return np.minimum(np.maximum(self.emerging_slots, by_share), n)

    def to_dict(self) -> dict[str, Any]:
        """The settings as logged with the policy."""
        return asdict(self)


def split_params(params: dict[str, Any]) -> tuple[Exposure, dict[str, Any]]:
    """Separate the exposure settings from a policy's own constructor arguments."""
    keys = Exposure.keys()
    exposure = Exposure(**{k: v for k, v in params.items() if k in keys})
    return exposure, {k: v for k, v in params.items() if k not in keys}


class Policy(ABC):
    """A slate policy over linear features.

    Subclasses set :attr:`name`, implement :meth:`scores`, :meth:`update`, :meth:`_params` and the two state
    hooks, and may override :meth:`score_table`, :meth:`candidate_table` and :meth:`slot_probabilities`. A subclass
    whose hooks broadcast over leading axes sets :attr:`batched` so that :meth:`replay_distributions` runs
    vectorized.

    Parameters
    ----------
    feature_dim
        Number of feature columns F the policy expects.
    exposure
        Exposure settings (defaults: none).
    """

    name: ClassVar[str]
    #: Whether :meth:`candidate_table` and :meth:`slot_probabilities` broadcast over leading axes.
    batched: ClassVar[bool] = False

    def __init__(self, feature_dim: int, exposure: Exposure | None = None) -> None:
        if feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = feature_dim
        self.exposure = exposure or Exposure()
        self.version = 0

    @classmethod
    def from_params(cls, feature_dim: int, params: dict[str, Any]) -> Self:
        """Construct from flat parameters (the policy's own and :class:`Exposure`'s)."""
        exposure, own = split_params(params)
        try:
            return cls(feature_dim, **own, exposure=exposure)
        except TypeError as exc:
            raise ValueError(f"bad parameters for policy {cls.name!r}: {exc}") from exc

    # -- hooks -------------------------------------------------------------------------------------------------

    @abstractmethod
    def scores(self, features: np.ndarray) -> np.ndarray:
        """Score K candidates: K-by-F features in, K scores out (higher is better)."""

    def score_table(self, features: np.ndarray) -> np.ndarray:
        """What :meth:`slot_probabilities` draws from: ``scores(features)`` unless the policy mixes over draws."""
        return self.scores(features)

    def candidate_table(
        self,
        features: np.ndarray,
        item_ids: np.ndarray | None,
        creator_ids: np.ndarray | None,
        parts: FeatureParts | None = None,
    ) -> np.ndarray:
        """The score table given features and, where known, ids (shapes (..., K, F) and (..., K)).

        Policies with item- and creator-level terms override this; the default ignores the ids and ``parts``.
        """
        return self.score_table(features)

    def batch_table(self, batch: CandidateBatch) -> np.ndarray:
        """The score tables of n decisions (replay), from their features.

        Policies that score from the feature parts override this and leave the features unbuilt.
        """
        return self.candidate_table(batch.features, batch.item_ids, batch.creator_ids)

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Distribution of one slot's item over the K candidates.

        Parameters
        ----------
        scores
            The score table from :meth:`score_table` (K scores, or leading axes before K).
        available
            K booleans: candidates not yet placed in an earlier slot (broadcasts against ``scores``).

        Returns
        -------
        numpy.ndarray
            K probabilities summing to one, zero where not available. The default is greedy: the best available
            score, ties split evenly, so a deterministic policy logs propensity 1.0 (unless a floor is set).
        """
        return greedy(scores, available)

    def greedy_mixture(self) -> float | None:
        """``epsilon`` when :meth:`slot_probabilities` is exactly ``(1 - epsilon) * greedy + epsilon * uniform``.

        Lets :meth:`rank` sample such policies without building each slot's distribution; None (the default)
        means the policy's slot distribution has another form.
        """
        return None

    @abstractmethod
    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from m served items: m-by-F features and m rewards."""

    def update_batch(
        self, batch: CandidateBatch, served: np.ndarray, rewards: np.ndarray, propensities: np.ndarray | None = None
    ) -> None:
        """Learn from n joined decisions at once.

        Parameters
        ----------
        batch
            The decisions' candidates.
        served
            n by S candidate columns in slot order, -1 for empty slots.
        rewards
            n by S rewards (ignored where ``served`` is -1).
        propensities
            n by S logged conditional propensities (used by policies that learn off-policy, such as VW's).

        The default gathers the served rows and calls :meth:`update` (slot positions unused).
        """
        rows, slots = np.nonzero(served >= 0)
        self.update(batch.features[rows, served[rows, slots]], np.asarray(rewards)[rows, slots])

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """Constructor arguments other than ``feature_dim`` and the exposure, as JSON-serializable values."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Learned state as named numpy arrays."""

    @abstractmethod
    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the learned state written by :meth:`_state`; raise ``PolicyStateError`` when it does not fit."""

    # -- shared behaviour --------------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """All parameters: the policy's own and the exposure settings (flat, as in configuration files)."""
        return self._params() | self.exposure.to_dict()

    def table(self, candidates: Candidates) -> np.ndarray:
        """The score table with the exposure's emerging weight applied."""
        self._check(candidates)
        table = self.candidate_table(candidates.features, candidates.item_ids, candidates.creator_ids, candidates.parts)
        return self._weighted(np.asarray(table, dtype=np.float64), candidates.emerging)

    def _weighted(self, table: np.ndarray, emerging: np.ndarray) -> np.ndarray:
        if not self.exposure.emerging_weight:
            return table
        bonus = self.exposure.emerging_weight * emerging
        return table + (bonus[..., None, :] if table.ndim > emerging.ndim else bonus)

    def _slot(
        self, table: np.ndarray, available: np.ndarray, emerging: np.ndarray, owed: int, slots_left: int
    ) -> np.ndarray:
        allowed = available
        if owed > 0 and owed >= slots_left:
            eligible = available & emerging
            if eligible.any():
                allowed = eligible
        p = self.slot_probabilities(table, allowed)
        if self.exposure.floor:
            p = (1.0 - self.exposure.floor) * p + self.exposure.floor * available / available.sum()
        return np.asarray(p, dtype=np.float64)

    def rank(self, candidates: Candidates, num_items: int, rng: np.random.Generator) -> Slate:
        """Sample a slate of ``min(num_items, K)`` items slot by slot, without replacement.

        The propensity of each slot is exactly the probability used to draw it.
        """
        table = self.table(candidates)
        n = min(num_items, candidates.count)
        mixture = self.greedy_mixture()
        if mixture is not None and table.ndim == 1:
            fast = _rank_greedy_mixture(table, candidates.emerging, n, mixture, self.exposure, rng)
            if fast is not None:
                return Slate(indices=fast[0], propensities=fast[1], scores=table)
        available = np.ones(candidates.count, dtype=bool)
        owed = int(self.exposure.required(n))
        indices = np.empty(n, dtype=np.int64)
        propensities = np.empty(n, dtype=np.float64)
        for slot in range(n):
            p = self._slot(table, available, candidates.emerging, owed, n - slot)
            choice = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
            choice = min(choice, candidates.count - 1)
            while not available[choice] or p[choice] == 0.0:  # guards against a draw landing on a zero cell
                choice -= 1
            indices[slot], propensities[slot] = choice, p[choice]
            available[choice] = False
            owed -= int(candidates.emerging[choice])
        scores = table if table.ndim == 1 else table.reshape(-1, candidates.count).mean(axis=0)
        return Slate(indices=indices, propensities=propensities, scores=scores)

    def slot_distributions(self, candidates: Candidates, indices: np.ndarray) -> np.ndarray:
        """Each slot's full distribution given the logged items in the slots before it.

        Parameters
        ----------
        candidates
            The decision's K candidates.
        indices
            n logged candidate indices in slot order (the logged slate length sets the emerging quota).

        Returns
        -------
        numpy.ndarray
            n-by-K matrix; row k is the probability of each candidate for slot k given slots 0..k-1 as logged.
        """
        table = self.table(candidates)
        available = np.ones(candidates.count, dtype=bool)
        n = len(indices)
        owed = int(self.exposure.required(n))
        out = np.empty((n, candidates.count))
        for slot, chosen in enumerate(indices):
            out[slot] = self._slot(table, available, candidates.emerging, owed, n - slot)
            available[chosen] = False
            owed -= int(candidates.emerging[chosen])
        return out

    def replay_distributions(self, batch: CandidateBatch, served: np.ndarray) -> np.ndarray:
        """Each logged slot's distribution for n decisions at once.

        Parameters
        ----------
        batch
            The decisions' candidates, n by K.
        served
            n by S int64 candidate columns in slot order, -1 for empty slots (filled slots come first).

        Returns
        -------
        numpy.ndarray
            n by S by K: row (i, s) is this policy's distribution over decision i's candidates for slot s given
            the logged items of slots before s; zeros for empty slots and padding columns.
        """
        served = np.asarray(served, dtype=np.int64)
        n, k = batch.valid.shape
        if served.ndim != 2 or served.shape[0] != n:
            raise ValueError(f"served must be n-by-S with n = {n}, got shape {served.shape}")
        filled = served >= 0
        if (served >= k).any() or (filled[:, 1:] & ~filled[:, :-1]).any():
            raise ValueError("served must hold candidate columns below K, with empty slots (-1) only at the end")
        rows, slots = np.nonzero(filled)
        if not batch.valid[rows, served[rows, slots]].all():
            raise ValueError("served names a padding column (valid is False there)")
        if batch.feature_dim != self.feature_dim:
            raise ValueError(f"batch has {batch.feature_dim} feature columns, policy expects {self.feature_dim}")
        if self.batched:
            parts = [
                self._replay_vectorized(
                    batch.take(slice(start, start + REPLAY_CHUNK)), served[start : start + REPLAY_CHUNK]
                )
                for start in range(0, n, REPLAY_CHUNK)
            ]
            return np.concatenate(parts) if parts else np.zeros((0, served.shape[1], k))
        out = np.zeros((n, served.shape[1], k))
        for i in range(n):
            candidates, cols = batch.row(i)
            local = np.searchsorted(cols, served[i, filled[i]])
            out[i, : len(local)][:, cols] = self.slot_distributions(candidates, local)
        return out

    def _replay_vectorized(self, batch: CandidateBatch, served: np.ndarray) -> np.ndarray:
        n, k = batch.valid.shape
        s = served.shape[1]
        filled = served >= 0
        rows, slots = np.nonzero(filled)
        available = np.empty((n, s, k), dtype=bool)
        left = batch.valid.copy()
        for slot in range(s):  # what is left before each slot: S small steps, not a cumsum over n-by-S-by-K
            available[:, slot] = left
            placed = np.flatnonzero(filled[:, slot])
            left[placed, served[placed, slot]] = False
        table = self._weighted(self.batch_table(batch), batch.emerging)
        em_served = np.zeros((n, s), dtype=np.int64)
        em_served[rows, slots] = batch.emerging[rows, served[rows, slots]]
        owed = self.exposure.required(filled.sum(axis=1))[:, None] - (np.cumsum(em_served, axis=1) - em_served)
        slots_left = filled.sum(axis=1)[:, None] - np.arange(s)[None, :]
        eligible = available & batch.emerging[:, None, :]
        restrict = (owed > 0) & (owed >= slots_left) & eligible.any(axis=2)
        allowed = np.where(restrict[:, :, None], eligible, available)
        p = self.slot_probabilities(table[:, None], allowed)
        if self.exposure.floor:
            count = np.maximum(available.sum(axis=2, keepdims=True), 1)
            p = (1.0 - self.exposure.floor) * p + self.exposure.floor * available / count
        return np.where(filled[:, :, None], p, 0.0)

    def to_bytes(self) -> bytes:
        """Serialize parameters and state with ``np.savez`` (no pickle)."""
        meta = {"format": FORMAT_VERSION, "policy": self.name, "feature_dim": self.feature_dim}
        meta |= {"version": self.version, "params": self.params()}
        buffer = io.BytesIO()
        np.savez(buffer, __meta__=np.array(json.dumps(meta)), **self._state())  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, params: dict[str, Any] | None = None) -> Self:
        """Load a policy written by :meth:`to_bytes`; ``params`` override the stored constructor arguments."""
        meta, arrays = read_snapshot(data)
        if meta.get("policy") != cls.name:
            raise PolicyStateError(f"snapshot holds policy {meta.get('policy')!r}, expected {cls.name!r}")
        policy = cls.from_params(int(meta["feature_dim"]), meta["params"] | (params or {}))
        policy._load_state(arrays)
        policy.version = int(meta["version"])
        return policy

    def _check(self, candidates: Candidates) -> None:
        if candidates.feature_dim != self.feature_dim:
            raise ValueError(
                f"candidates have {candidates.feature_dim} feature columns, policy expects {self.feature_dim}"
            )


def _rank_greedy_mixture(
    table: np.ndarray, emerging: np.ndarray, n: int, epsilon: float, exposure: Exposure, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """:meth:`Policy.rank` for ``(1 - epsilon) * greedy + epsilon * uniform`` slots, without per-slot arrays.

    Same distributions as the general path to the last bit (same operations in the same order); returns None
    when scores tie, which the general path splits evenly.
    """
    k = len(table)
    order = np.argsort(-table, kind="stable")
    ranked = table[order]
    if (ranked[:-1] == ranked[1:]).any():
        return None
    floor = exposure.floor
    taken = np.zeros(k, dtype=bool)
    is_emerging = emerging.tolist()
    order_list = order.tolist()
    avail, em_avail = k, int(emerging.sum())
    owed = int(exposure.required(n))
    indices = np.empty(n, dtype=np.int64)
    propensities = np.empty(n, dtype=np.float64)
    draws = rng.random(n)
    cursor = 0
    for slot in range(n):
        restrict = owed > 0 and owed >= n - slot and em_avail > 0
        while taken[order_list[cursor]]:
            cursor += 1
        top = order_list[cursor]
        if restrict:
            j = cursor
            while taken[order_list[j]] or not is_emerging[order_list[j]]:
                j += 1
            top = order_list[j]
        allowed = em_avail if restrict else avail
        share = epsilon * (1.0 / allowed)
        p_top = (1.0 - epsilon) * 1.0 + share
        p_allowed = 0.0 + share
        p_other = 0.0
        if floor:
            p_top = (1.0 - floor) * p_top + floor * 1.0 / avail
            p_allowed = (1.0 - floor) * p_allowed + floor * 1.0 / avail
            p_other = floor * 1.0 / avail
        r = float(draws[slot])
        choice, p = top, p_top
        if r >= p_top:
            r -= p_top
            available = ~taken
            available[top] = False
            allowed_pool = available & emerging if restrict else available
            mass = (allowed - 1) * p_allowed
            pool, p = (allowed_pool, p_allowed) if r < mass or not p_other else (available & ~allowed_pool, p_other)
            if r >= mass and p_other:
                r -= mass
            cells = np.flatnonzero(pool)
            if cells.size and p > 0:
                choice = int(cells[min(int(r / p), cells.size - 1)])
            else:  # a draw past the last cell by rounding
                choice, p = top, p_top
        indices[slot], propensities[slot] = choice, p
        taken[choice] = True
        avail -= 1
        if is_emerging[choice]:
            em_avail -= 1
            owed -= 1
    return indices, propensities


def read_snapshot(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split :meth:`Policy.to_bytes` output into its metadata and its state arrays."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise PolicyStateError(f"not a Scout policy snapshot: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise PolicyStateError(f"snapshot format is not {FORMAT_VERSION}")
    return meta, arrays


def greedy(scores: np.ndarray, available: np.ndarray) -> np.ndarray:
    """All mass on the best available score, split evenly between exact ties (broadcasts over leading axes).

    Rows with no available candidate get all zeros when batched; a single row raises ``ValueError``.
    """
    if np.ndim(available) == 1 and not np.any(available):
        raise ValueError("no candidate is available for this slot")
    masked = np.where(available, scores, -np.inf)
    best = (masked == masked.max(axis=-1, keepdims=True)) & available
    count = best.sum(axis=-1, keepdims=True)
    return best / np.maximum(count, 1)


def uniform(available: np.ndarray) -> np.ndarray:
    """Probability spread evenly over the available candidates (broadcasts over leading axes)."""
    return available / np.maximum(available.sum(axis=-1, keepdims=True), 1)
