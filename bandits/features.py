"""The one feature function, used online by the server and offline by evaluation.

For a decision with query vector ``q`` (d numbers: the mean content vector of the unit's seed items), context
``c`` (C numbers, in the experiment's configured key order) and candidate content vectors ``v`` (K rows of d),
the features of candidate ``v`` are the concatenation of

1. ``q * v``: elementwise query-item affinity (d columns), so a linear model learns which taste dimensions matter;
2. ``v``: the item's content alone (d columns), for content-level quality;
3. ``c_j * v`` for each context value ``c_j`` (C times d columns), so context changes which content is preferred;
4. ``1``: a bias column.

That is ``F = (2 + C) * d + 1`` columns. :func:`build_features_batch` builds the same rows for n decisions at
once (the learner's and offline evaluation's path); row for row it equals :func:`build_features`.

Item- and creator-level terms (what a listener thinks of this very item or creator, beyond its content) are not
columns here: they are per-arm parameters of the policies' reward model (:class:`bandits.ridge.LinearModel`), keyed
by the candidates' item and creator ids.

The features are linear in the item vector except for the bias column, and every block but the first weights the
item vector by one number (1 or a context value): :func:`block_weights` exposes that structure, and policies score
from the parts (``q``, ``V``, ``c``) without building the features (:class:`bandits.linucb.LinUCB`). This module is
plain numpy: :mod:`bandits.base` builds :class:`~bandits.base.Candidates` and
:class:`~bandits.base.CandidateBatch` from the parts with it.
"""

from __future__ import annotations

import numpy as np


def feature_dim(embedding_dim: int, num_context: int) -> int:
    """Number of feature columns for d-dimensional content vectors and C context values."""
    return (2 + num_context) * embedding_dim + 1


def build_features(query: np.ndarray, items: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Build the K-by-F feature matrix of one decision.

    Parameters
    ----------
    query
        Query content vector, d numbers.
    items
        Candidate content vectors, K rows of d.
    context
        Context values, C numbers in configured key order.

    Returns
    -------
    numpy.ndarray
        K rows of ``(2 + C) * d + 1`` float64 features.
    """
    items = np.asarray(items, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    context = np.asarray(context, dtype=np.float64)
    if items.ndim != 2 or query.shape != (items.shape[1],):
        raise ValueError(f"query must have the items' dimension; got query {query.shape}, items {items.shape}")
    if context.ndim != 1:
        raise ValueError(f"context must be a vector, got shape {context.shape}")
    k, d = items.shape
    out = np.empty((k, (2 + len(context)) * d + 1), dtype=np.float64)
    np.multiply(query, items, out=out[:, :d])
    out[:, d : 2 * d] = items
    for j, value in enumerate(context):
        np.multiply(items, value, out=out[:, (2 + j) * d : (3 + j) * d])
    out[:, -1] = 1.0
    return out


def block_weights(query: np.ndarray, context: np.ndarray) -> np.ndarray:
    """The per-block weights: row b multiplies the item vector in feature block b.

    ``build_features(q, V, c)[:, :-1]`` equals ``(V[:, None, :] * W[None]).reshape(K, -1)`` with ``W`` the
    ``(2 + C)``-by-d result ``[q, 1, c_1, ..., c_C]``; rows after the first are constant. Leading axes broadcast:
    n queries (n-by-d) and n contexts (n-by-C) give n-by-(2 + C)-by-d.
    """
    query = np.asarray(query, dtype=np.float64)
    context = np.asarray(context, dtype=np.float64)
    c = context.shape[-1]
    W = np.empty((*query.shape[:-1], 2 + c, query.shape[-1]))
    W[..., 0, :], W[..., 1, :] = query, 1.0
    W[..., 2:, :] = context[..., :, None]
    return W


def folded_weights(query: np.ndarray, context: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``w = sum_b W_b theta_b``: the d-vector whose dot with an item vector is its features' dot with the coefficients.

    ``coefficients`` are the ``(2 + C) * d`` feature coefficients without the bias, one vector for every request or
    one row per request (n-by-``(2 + C) * d`` against n queries and contexts); :func:`block_weights` gives ``W``.
    """
    W = block_weights(query, context)
    return (W * np.reshape(coefficients, (*np.shape(coefficients)[:-1], *W.shape[-2:]))).sum(axis=-2)


def build_features_batch(queries: np.ndarray, items: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Build the features of n decisions at once.

    Parameters
    ----------
    queries
        Query content vectors, n rows of d.
    items
        Candidate content vectors, n by K by d (pad short candidate lists with any finite rows).
    context
        Context values, n rows of C in configured key order.

    Returns
    -------
    numpy.ndarray
        n by K by ``(2 + C) * d + 1`` float64 features; ``out[i]`` equals
        ``build_features(queries[i], items[i], context[i])``.
    """
    items = np.asarray(items, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    context = np.asarray(context, dtype=np.float64)
    if items.ndim != 3:
        raise ValueError(f"items must be n-by-K-by-d, got shape {items.shape}")
    n, k, d = items.shape
    if queries.shape != (n, d):
        raise ValueError(f"queries must be n-by-d = {(n, d)} to match items {items.shape}, got {queries.shape}")
    if context.ndim != 2 or context.shape[0] != n:
        raise ValueError(f"context must be n-by-C with n = {n}, got shape {context.shape}")
    c = context.shape[1]
    out = np.empty((n, k, (2 + c) * d + 1), dtype=np.float64)
    np.multiply(queries[:, None, :], items, out=out[:, :, :d])
    out[:, :, d : 2 * d] = items
    if c:
        out[:, :, 2 * d : (2 + c) * d] = (context[:, None, :, None] * items[:, :, None, :]).reshape(n, k, c * d)
    out[:, :, -1] = 1.0
    return out
