"""The policy interface: score K candidates, sample a slate slot by slot, report exact propensities.

A policy fills two hooks: :meth:`Policy.scores` (one number per candidate) and, optionally,
:meth:`Policy.slot_probabilities` (how a slot's item is drawn from the still-available candidates; greedy by
default). Everything else, sampling, the probability of a logged slate, learning and serialization, is shared, so
online serving and offline evaluation use the very same probabilities.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

FORMAT_VERSION = 1


class PolicyStateError(ValueError):
    """A serialized policy cannot be loaded (corrupt, or another policy's or format's state)."""


@dataclass(frozen=True)
class Candidates:
    """The K candidates of one decision.

    Parameters
    ----------
    features
        Feature matrix, K rows (one per candidate) by F columns, from :func:`bandits.features.build_features`.
    emerging
        K booleans: whether each candidate's creator is emerging.
    """

    features: np.ndarray
    emerging: np.ndarray

    def __post_init__(self) -> None:
        f = np.asarray(self.features, dtype=np.float64)
        e = np.asarray(self.emerging, dtype=bool)
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"features must be a non-empty K-by-F matrix, got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features must be finite")
        if e.shape != (f.shape[0],):
            raise ValueError(f"emerging must have one flag per candidate ({f.shape[0]}), got shape {e.shape}")
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "emerging", e)

    @property
    def count(self) -> int:
        """Number of candidates K."""
        return int(self.features.shape[0])


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
        K policy scores, one per candidate.
    """

    indices: np.ndarray
    propensities: np.ndarray
    scores: np.ndarray

    @property
    def probability(self) -> float:
        """Joint probability of the whole slate (the product of the per-slot propensities)."""
        return float(np.prod(self.propensities))


class Policy(ABC):
    """A slate policy over linear features.

    Subclasses set :attr:`name`, implement :meth:`scores`, :meth:`update`, :meth:`params` and the two state
    hooks, and may override :meth:`slot_probabilities`.

    Parameters
    ----------
    feature_dim
        Number of feature columns F the policy expects.
    """

    name: ClassVar[str]

    def __init__(self, feature_dim: int) -> None:
        if feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = feature_dim
        self.version = 0

    # -- hooks -------------------------------------------------------------------------------------------------

    @abstractmethod
    def scores(self, features: np.ndarray) -> np.ndarray:
        """Score K candidates: K-by-F features in, K scores out (higher is better)."""

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """Distribution of one slot's item over the K candidates.

        Parameters
        ----------
        scores
            K scores from :meth:`scores`.
        available
            K booleans: candidates not yet placed in an earlier slot.

        Returns
        -------
        numpy.ndarray
            K probabilities summing to one, zero where not available. The default is greedy: the best available
            score, ties split evenly, so a deterministic policy logs propensity 1.0.
        """
        return greedy(scores, available)

    @abstractmethod
    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from m served items: m-by-F features and m rewards."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Constructor arguments other than ``feature_dim``, as JSON-serializable values."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Learned state as named numpy arrays."""

    @abstractmethod
    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the learned state written by :meth:`_state`; raise ``PolicyStateError`` when it does not fit."""

    # -- shared behaviour --------------------------------------------------------------------------------------

    def rank(self, candidates: Candidates, num_items: int, rng: np.random.Generator) -> Slate:
        """Sample a slate of ``min(num_items, K)`` items slot by slot, without replacement.

        The propensity of each slot is exactly the probability used to draw it.
        """
        self._check(candidates)
        scores = self.scores(candidates.features)
        available = np.ones(candidates.count, dtype=bool)
        n = min(num_items, candidates.count)
        indices = np.empty(n, dtype=np.int64)
        propensities = np.empty(n, dtype=np.float64)
        for slot in range(n):
            p = self.slot_probabilities(scores, available)
            choice = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
            choice = min(choice, candidates.count - 1)
            while not available[choice] or p[choice] == 0.0:  # guards against a draw landing on a zero cell
                choice -= 1
            indices[slot], propensities[slot] = choice, p[choice]
            available[choice] = False
        return Slate(indices=indices, propensities=propensities, scores=scores)

    def slot_distributions(self, candidates: Candidates, indices: np.ndarray) -> np.ndarray:
        """Each slot's full distribution given the logged items in the slots before it.

        Parameters
        ----------
        candidates
            The decision's K candidates.
        indices
            n logged candidate indices in slot order.

        Returns
        -------
        numpy.ndarray
            n-by-K matrix; row k is the probability of each candidate for slot k given slots 0..k-1 as logged.
        """
        self._check(candidates)
        scores = self.scores(candidates.features)
        available = np.ones(candidates.count, dtype=bool)
        out = np.empty((len(indices), candidates.count))
        for slot, chosen in enumerate(indices):
            out[slot] = self.slot_probabilities(scores, available)
            available[chosen] = False
        return out

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
        try:
            policy = cls(feature_dim=int(meta["feature_dim"]), **(meta["params"] | (params or {})))
        except TypeError as exc:
            raise ValueError(f"bad parameters for policy {cls.name!r}: {exc}") from exc
        policy._load_state(arrays)
        policy.version = int(meta["version"])
        return policy

    def _check(self, candidates: Candidates) -> None:
        if candidates.features.shape[1] != self.feature_dim:
            raise ValueError(
                f"candidates have {candidates.features.shape[1]} feature columns, policy expects {self.feature_dim}"
            )


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
    """All mass on the best available score, split evenly between exact ties."""
    if not available.any():
        raise ValueError("no candidate is available for this slot")
    masked = np.where(available, scores, -np.inf)
    best = masked == masked.max()
    return best / best.sum()
