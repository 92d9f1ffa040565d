import numpy as np
import pytest

from bandits.emerging import EmergingRule
from bandits.features import build_features, feature_dim


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
