"""The linear reward model behind the linear policies: a shared ridge regression plus item and creator terms.

The model of a click on candidate ``x`` shown at slot ``k`` is the examination hypothesis

    E[reward] = e_k * (theta^T x + b_item + b_creator)

where ``e_k`` is the examination probability of slot ``k`` (``1 / log2(k + 2)`` by default, or 1 when position
is not modelled) and the bracket is the item's relevance, which is what policies rank by. ``theta`` is shared by
all items (a ridge regression on ``e_k * x``); ``b_item`` and ``b_creator`` are per-arm terms kept in hashed
buckets (what this item or creator earns beyond what its content predicts), learned as running ridge means of
the residual, so an item or creator with little data stays near zero and carries a wide uncertainty.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from bandits.base import PolicyStateError

#: Below this many rows per feature, updates use Sherman-Morrison; above, one batch solve.
_BATCH_ROWS_PER_DIM = 0.25


class RidgeRegression:
    """Ridge regression over ``A = l2 * I + X^T X`` and ``b = X^T y``, with ``A^-1`` kept current.

    Small updates use Sherman-Morrison (O(F^2) a row); large ones add ``X^T X`` and re-invert (O(m F^2 + F^3)).

    Parameters
    ----------
    dim
        Number of features F.
    l2
        Ridge penalty (the prior precision), positive.
    """

    def __init__(self, dim: int, l2: float = 1.0) -> None:
        if not l2 > 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        self.dim = dim
        self.l2 = float(l2)
        self.A = np.eye(dim) * l2
        self.b = np.zeros(dim)
        self.A_inv = np.eye(dim) / l2
        self.theta = np.zeros(dim)

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        """Add m observations: an m-by-F matrix and m targets."""
        X, y = np.atleast_2d(np.asarray(X, dtype=np.float64)), np.atleast_1d(np.asarray(y, dtype=np.float64))
        if X.shape[0] != y.shape[0] or X.shape[1] != self.dim:
            raise ValueError(f"update needs m-by-{self.dim} features and m targets, got {X.shape} and {y.shape}")
        if X.shape[0] == 0:
            return
        if X.shape[0] < _BATCH_ROWS_PER_DIM * self.dim:
            for x, target in zip(X, y, strict=True):
                Ax = self.A_inv @ x
                self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
                self.A += np.outer(x, x)
                self.b += target * x
        else:
            self.A += X.T @ X
            self.b += X.T @ y
            self.A_inv = _spd_inverse(self.A)
        self.theta = self.A_inv @ self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Posterior mean reward: (..., F) in, (...) out."""
        return X @ self.theta

    def width(self, X: np.ndarray) -> np.ndarray:
        """Posterior standard deviation factor ``sqrt(x^T A^-1 x)``: (..., F) in, (...) out (matrix products)."""
        return np.sqrt(np.maximum(((X @ self.A_inv) * X).sum(axis=-1), 0.0))

    def state(self) -> dict[str, np.ndarray]:
        """``A`` and ``b``; everything else is derived from them."""
        return {"A": self.A, "b": self.b}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore ``A`` and ``b`` written by :meth:`state`, recomputing the inverse exactly."""
        try:
            A, b = np.asarray(arrays["A"], dtype=np.float64), np.asarray(arrays["b"], dtype=np.float64)
        except KeyError as exc:
            raise PolicyStateError(f"ridge state lacks array {exc}") from exc
        if A.shape != (self.dim, self.dim) or b.shape != (self.dim,):
            raise PolicyStateError(f"ridge state has A {A.shape} and b {b.shape}, expected dimension {self.dim}")
        if not (np.isfinite(A).all() and np.isfinite(b).all()):
            raise PolicyStateError("ridge state holds non-finite values")
        self.A, self.b = A.copy(), b.copy()
        try:
            self.A_inv = _spd_inverse(self.A)
        except np.linalg.LinAlgError as exc:
            raise PolicyStateError(f"ridge state A is not positive definite: {exc}") from exc
        with np.errstate(over="ignore", invalid="ignore"):  # a theta that overflows gives non-finite scores: the
            self.theta = self.A_inv @ self.b  # server ranks uniformly instead (tested), so no warning here


def _spd_inverse(A: np.ndarray) -> np.ndarray:
    L_inv = np.linalg.inv(np.linalg.cholesky(A))
    return np.asarray(L_inv.T @ L_inv, dtype=np.float64)


@functools.lru_cache(maxsize=1 << 20)
def _crc(value: str, salt: int) -> int:
    return zlib.crc32(value.encode(), salt)


def arm_keys(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """Stable 32-bit hashes (CRC-32 started at ``salt``) of string ids, any shape; the same in every process."""
    flat = np.asarray(ids, dtype=object).ravel()
    return np.fromiter((_crc(str(v), salt) for v in flat), dtype=np.int64, count=flat.size).reshape(np.shape(ids))


class ArmTerms:
    """Per-item and per-creator reward terms in hashed buckets.

    Each bucket keeps ``n`` (the sum of squared examination weights of its observations) and a bias ``b``; an
    observation with weight ``e`` and residual ``r = y - e * prediction`` moves ``b`` by ``e * r / (n + l2)``, the
    recursive ridge mean, so ``b`` shrinks to zero with little data.

    Parameters
    ----------
    buckets
        Buckets per kind (item, creator), positive.
    l2
        Prior precision of each term.
    """

    def __init__(self, buckets: int, l2: float = 1.0) -> None:
        if buckets <= 0:
            raise ValueError(f"arm_buckets must be positive, got {buckets}")
        if not l2 > 0:
            raise ValueError(f"arm_l2 must be positive, got {l2}")
        self.buckets, self.l2 = int(buckets), float(l2)
        self.n = np.zeros((2, self.buckets))
        self.b = np.zeros((2, self.buckets))

    def slots(self, item_ids: np.ndarray, creator_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucket numbers of items and creators (creators hashed with a prefix so the two kinds differ)."""
        return arm_keys(item_ids) % self.buckets, arm_keys(creator_ids, salt=0x5EED) % self.buckets

    def bias(self, items: np.ndarray, creators: np.ndarray) -> np.ndarray:
        """Item plus creator term for bucket numbers of any shape."""
        return self.b[0, items] + self.b[1, creators]

    def variance(self, items: np.ndarray, creators: np.ndarray) -> np.ndarray:
        """Posterior variance factor of the two terms: ``1 / (n_item + l2) + 1 / (n_creator + l2)``."""
        return 1.0 / (self.n[0, items] + self.l2) + 1.0 / (self.n[1, creators] + self.l2)

    def bonus(self, items: np.ndarray, creators: np.ndarray) -> np.ndarray:
        """``(1 / sqrt(1 + n_item) + 1 / sqrt(1 + n_creator)) / 2``: 1 for unseen arms, falling with data."""
        return 0.5 * (1.0 / np.sqrt(1.0 + self.n[0, items]) + 1.0 / np.sqrt(1.0 + self.n[1, creators]))

    def update(self, items: np.ndarray, creators: np.ndarray, weights: np.ndarray, residuals: np.ndarray) -> None:
        """Add m observations (bucket numbers, examination weights, residuals against the full prediction)."""
        for kind, where in ((0, items), (1, creators)):
            np.add.at(self.n[kind], where, weights * weights)
            step = np.zeros(self.buckets)
            np.add.at(step, where, weights * residuals)
            touched = np.unique(where)
            self.b[kind, touched] += step[touched] / (self.n[kind, touched] + self.l2)

    def state(self) -> dict[str, np.ndarray]:
        """Counts and terms."""
        return {"arm_n": self.n, "arm_b": self.b}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` wrote."""
        try:
            n, b = np.asarray(arrays["arm_n"], dtype=np.float64), np.asarray(arrays["arm_b"], dtype=np.float64)
        except KeyError as exc:
            raise PolicyStateError(f"arm state lacks array {exc}") from exc
        if n.shape != (2, self.buckets) or b.shape != (2, self.buckets):
            raise PolicyStateError(f"arm state has shape {n.shape}, expected {(2, self.buckets)}")
        if not (np.isfinite(n).all() and np.isfinite(b).all()) or (n < 0).any():
            raise PolicyStateError("arm state holds non-finite or negative values")
        self.n, self.b = n.copy(), b.copy()


def examination(slots: np.ndarray, model: str) -> np.ndarray:
    """Examination weight of each slot number: ``1 / log2(k + 2)`` for ``"dcg"``, 1 for ``"none"``."""
    if model == "none":
        return np.ones(np.shape(slots))
    if model == "dcg":
        return 1.0 / np.log2(np.asarray(slots, dtype=np.float64) + 2.0)
    raise ValueError(f"position_model must be 'dcg' or 'none', got {model!r}")
