"""Online ridge regression: the linear reward model behind the LinUCB and epsilon-greedy policies."""

from __future__ import annotations

import numpy as np

from bandits.base import PolicyStateError


class RidgeRegression:
    """Ridge regression updated one observation at a time.

    Keeps ``A = l2 * I + X^T X`` and ``b = X^T y``, and the inverse of ``A`` through Sherman-Morrison updates, so
    an update costs O(F^2) and a prediction needs no solve.

    Parameters
    ----------
    dim
        Number of features F.
    l2
        Ridge penalty (the prior precision), positive.
    """

    def __init__(self, dim: int, l2: float = 1.0) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, got {l2}")
        self.dim = dim
        self.l2 = l2
        self.A = np.eye(dim) * l2
        self.b = np.zeros(dim)
        self.A_inv = np.eye(dim) / l2
        self.theta = np.zeros(dim)

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        """Add m observations: an m-by-F matrix and m targets."""
        for x, target in zip(np.atleast_2d(X), np.atleast_1d(y), strict=True):
            Ax = self.A_inv @ x
            self.A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
            self.A += np.outer(x, x)
            self.b += target * x
        self.theta = self.A_inv @ self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Posterior mean reward of K rows: K-by-F in, K out."""
        return X @ self.theta

    def width(self, X: np.ndarray) -> np.ndarray:
        """Posterior standard deviation factor ``sqrt(x^T A^-1 x)`` of K rows."""
        return np.sqrt(np.maximum(np.einsum("kf,fg,kg->k", X, self.A_inv, X), 0.0))

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
        self.A_inv = np.asarray(np.linalg.inv(self.A), dtype=np.float64)
        self.theta = self.A_inv @ self.b
