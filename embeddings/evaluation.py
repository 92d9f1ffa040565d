"""Recall@K of held-out co-engagements: how many of the items a unit engaged with its query vector retrieves."""

from __future__ import annotations

import faiss
import numpy as np


def co_engagement_recall(
    vectors: np.ndarray, seeds: list[np.ndarray], targets: list[np.ndarray], k: int
) -> tuple[float, int]:
    """Mean over units of the share of their target items in the top-k of their query.

    Parameters
    ----------
    vectors
        N-by-d unit item vectors.
    seeds
        Per unit, the positions of items it engaged with that form the query (their normalized mean); they are
        excluded from the results.
    targets
        Per unit, the held-out positions it also engaged with.
    k
        Results retrieved per unit.

    Returns
    -------
    recall, units
        The mean recall@k and the number of units with at least one seed and one target.
    """
    if len(seeds) != len(targets):
        raise ValueError(f"seeds has {len(seeds)} units, targets has {len(targets)}")
    keep = [i for i in range(len(seeds)) if len(seeds[i]) and len(targets[i])]
    if not keep:
        return 0.0, 0
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.stack([vectors[seeds[i]].mean(axis=0) for i in keep])
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    width = k + max(len(seeds[i]) for i in keep)
    found = index.search(queries, min(width, len(vectors)))[1]
    recalls = []
    for row, i in enumerate(keep):
        seed_set = set(seeds[i].tolist())
        top = [p for p in found[row] if p not in seed_set][:k]
        recalls.append(len(set(top) & set(targets[i].tolist())) / len(set(targets[i].tolist())))
    return float(np.mean(recalls)), len(keep)
