import numpy as np
import pytest

from bandits.base import CandidateBatch, Candidates
from bandits.emerging import EmergingRule, merge_candidates
from bandits.features import block_weights, build_features, build_features_batch, feature_dim
from bandits.linucb import LinUCB


def test_features_follow_the_documented_layout() -> None:
    query = np.array([1.0, 2.0])
    items = np.array([[3.0, 4.0], [5.0, 6.0]])
    context = np.array([10.0, 0.5])
    X = build_features(query, items, context)
    assert X.shape == (2, feature_dim(2, 2)) == (2, 9)
    np.testing.assert_array_equal(X[0], [3, 8, 3, 4, 30, 40, 1.5, 2, 1])


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="dimension"):
        build_features(np.zeros(3), np.zeros((2, 2)), np.zeros(1))


def test_emerging_rule_by_popularity_quantile_or_age() -> None:
    creators = np.array(["a", "a", "b", "c", "d"], dtype=object)
    popularity = np.array([1.0, 1.0, 5.0, 10.0, 20.0])
    rule = EmergingRule(popularity_quantile=0.5, max_age_days=30).resolve(creators, popularity)
    assert rule.popularity_threshold == pytest.approx(7.5)
    flags = rule.flags(popularity, np.array([400, 400, 400, 10, 400.0]))
    np.testing.assert_array_equal(flags, [True, True, True, True, False])
    with pytest.raises(ValueError, match="resolve"):
        EmergingRule().flags(popularity, popularity)


def test_batch_features_equal_row_by_row() -> None:
    rng = np.random.default_rng(0)
    queries, items, context = rng.normal(size=(4, 3)), rng.normal(size=(4, 5, 3)), rng.normal(size=(4, 2))
    batch = build_features_batch(queries, items, context)
    assert batch.shape == (4, 5, feature_dim(3, 2))
    for i in range(4):
        np.testing.assert_array_equal(batch[i], build_features(queries[i], items[i], context[i]))
    assert build_features_batch(queries, items, np.zeros((4, 0))).shape == (4, 5, feature_dim(3, 0))
    with pytest.raises(ValueError, match="queries"):
        build_features_batch(queries[:3], items, context)
    with pytest.raises(ValueError, match="context"):
        build_features_batch(queries, items, context[:2])


def test_block_weights_reproduce_the_features() -> None:
    rng = np.random.default_rng(1)
    query, items, context = rng.normal(size=4), rng.normal(size=(3, 4)), rng.normal(size=2)
    W = block_weights(query, context)
    np.testing.assert_allclose(
        (items[:, None, :] * W[None]).reshape(3, -1), build_features(query, items, context)[:, :-1]
    )


def test_linucb_scores_from_parts_equal_scores_from_features() -> None:
    rng = np.random.default_rng(2)
    d, c = 5, 2
    policy = LinUCB(feature_dim(d, c), alpha=0.8, arm_buckets=32)
    X = build_features_batch(rng.normal(size=(50, d)), rng.normal(size=(50, 3, d)), rng.random((50, c)))
    policy.update(X.reshape(150, -1), rng.random(150))
    query, items, context = rng.normal(size=d), rng.normal(size=(7, d)), rng.random(c)
    ids = np.array([f"i{j}" for j in range(7)], dtype=object)
    with_parts = Candidates.from_parts(query, items, context, np.zeros(7, bool), ids, ids)
    plain = Candidates(build_features(query, items, context), np.zeros(7, bool), ids, ids)
    assert with_parts.parts is not None and plain.parts is None
    np.testing.assert_allclose(policy.table(with_parts), policy.table(plain), rtol=1e-10)
    slate = policy.rank(with_parts, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(slate.indices, policy.rank(plain, 3, np.random.default_rng(0)).indices)
    # Serving ranks from the parts: the K-by-F features are never built, unless something asks for them.
    assert "features" not in vars(with_parts) and with_parts.feature_dim == plain.features.shape[1]
    np.testing.assert_array_equal(with_parts.features, plain.features)
    with pytest.raises(ValueError, match="finite"):
        Candidates.from_parts(query, np.full((7, d), np.inf), context, np.zeros(7, bool))
    with pytest.raises(ValueError, match="one flag per candidate"):
        Candidates.from_parts(query, items, context, np.zeros(6, bool))
    with pytest.raises(ValueError, match="parts"):
        Candidates.from_parts(query[:3], items, context, np.zeros(7, bool))
    with pytest.raises(ValueError, match="parts"):  # features of other candidates than the parts describe
        Candidates(plain.features[:3], np.zeros(7, bool), parts=with_parts.parts)


def test_merge_candidates_reserves_a_quota_for_the_emerging_list() -> None:
    main = ["a", "b", "e1", "c", "d", "f"]
    emerging = ["e1", "e2", "e3"]
    ids, from_quota = merge_candidates(main, emerging, total=5, quota=2)
    assert ids == ["a", "b", "e1", "e2", "e3"] and from_quota == [False, False, False, True, True]
    assert merge_candidates(main, emerging, total=5, quota=2) == (ids, from_quota)  # deterministic
    ids, _ = merge_candidates(main, ["e1"], total=5, quota=3)  # little to add: main fills the rest
    assert ids == ["a", "b", "e1", "c", "d"]
    assert merge_candidates(main, emerging, total=4, quota=0)[0] == main[:4]
    with pytest.raises(ValueError, match="quota"):
        merge_candidates(main, emerging, total=3, quota=4)


def test_a_batch_from_parts_replays_like_one_from_features_and_linucb_never_builds_them() -> None:
    rng = np.random.default_rng(4)
    n, k, d, c = 40, 6, 5, 2
    queries, items, context = rng.normal(size=(n, d)), rng.normal(size=(n, k, d)), rng.random((n, c))
    valid, emerging = np.ones((n, k), bool), rng.random((n, k)) < 0.3
    valid[3, 4:] = False
    served = np.tile(np.arange(3), (n, 1))
    policy = LinUCB(feature_dim(d, c), alpha=0.7, arm_buckets=16)
    X = build_features_batch(queries, items, context)
    policy.update(X[:, :2].reshape(-1, X.shape[2]), rng.random(2 * n))
    ids = np.array([[f"i{i}-{j}" for j in range(k)] for i in range(n)], dtype=object)
    lazy = CandidateBatch.from_parts(queries, items, context, valid, emerging, ids, ids)
    eager = CandidateBatch(X, valid, emerging, ids, ids)
    np.testing.assert_allclose(
        policy.replay_distributions(lazy, served), policy.replay_distributions(eager, served), atol=1e-12
    )
    assert "features" not in vars(lazy) and lazy.feature_dim == X.shape[2]
    part = lazy.take(slice(5, 9))
    assert "features" not in vars(part) and len(part) == 4
    np.testing.assert_array_equal(part.features, X[5:9])  # built on first use
    with pytest.raises(ValueError, match="valid must be n-by-K"):
        CandidateBatch.from_parts(queries, items, context, valid[:, :3], emerging)
    with pytest.raises(ValueError, match="parts"):
        CandidateBatch.from_parts(queries[:3], items, context, valid, emerging)


@pytest.mark.parametrize("context", ["binary", "continuous"])
def test_linucb_batch_width_from_parts_equals_the_full_width(context: str) -> None:
    """The batched factored width (one M per decision) equals x^T A^-1 x on binary and on continuous contexts."""
    rng = np.random.default_rng(5)
    n, k, d = 300, 8, 6
    queries, items = rng.normal(size=(n, d)), rng.normal(size=(n, k, d))
    ctx = (rng.random((n, 2)) < 0.5).astype(float) if context == "binary" else rng.normal(size=(n, 2))
    policy = LinUCB(feature_dim(d, 2), alpha=1.0)
    X = build_features_batch(queries, items, ctx)
    policy.update(X[:, :3].reshape(-1, X.shape[2]), rng.random(3 * n))
    full = ((X @ policy.model.A_inv) * X).sum(axis=-1)
    from_parts = policy._parts_variance(
        CandidateBatch.from_parts(queries, items, ctx, np.ones((n, k), bool), np.zeros((n, k), bool)).parts
    )
    np.testing.assert_allclose(from_parts, full, rtol=1e-10)
