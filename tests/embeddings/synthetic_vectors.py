"""Shared test data for the index tests: clustered unit vectors and a catalog with no content signals."""

import numpy as np

from embeddings.base import Catalog


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors from a mixture of 50 clusters plus noise (not trivially separable)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, d))
    x = centers[rng.integers(50, size=n)] + 1.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog_of(n: int, prefix: str = "item") -> Catalog:
    return Catalog(
        item_ids=np.array([f"{prefix}-{i}" for i in range(n)], dtype=object),
        creator_ids=np.array([f"creator-{i % 7}" for i in range(n)], dtype=object),
        texts=np.array([""] * n, dtype=object),
        tags=tuple(() for _ in range(n)),
        descriptors=np.zeros((n, 0)),
        creator_popularity=np.ones(n),
        creator_age_days=np.ones(n),
    )
