"""The synthetic world's creator ages and its named presets."""

import numpy as np
import pytest

from offline_eval.world import SyntheticWorld, WorldConfig, world_preset

SMALL = {"num_items": 3000, "num_creators": 300, "num_users": 100}


def test_established_creators_have_different_ages() -> None:
    world = SyntheticWorld(WorldConfig(**SMALL))
    established = world.creator_age_days[~world.creator_emerging]
    assert np.unique(established).size == established.size  # the old code drew one age for all of them
    assert established.min() >= 180 and established.max() <= 3650
    assert world.creator_age_days[world.creator_emerging].max() <= 180


def test_foundation_preset_is_the_default_world() -> None:
    a, b = SyntheticWorld(WorldConfig(**SMALL)), SyntheticWorld(world_preset("foundation", **SMALL))
    items = np.arange(SMALL["num_items"])
    np.testing.assert_array_equal(
        a.click_probability(3, items, np.array([1.0, 0.0])), b.click_probability(3, items, np.array([1.0, 0.0]))
    )
    assert not a.item_quality.any()


def test_tradeoff_preset_favours_familiar_creators_and_spreads_emerging_quality() -> None:
    world = SyntheticWorld(world_preset("tradeoff", **SMALL))
    emerging = world.creator_emerging
    assert world.creator_quality[emerging].std() > 1.5 * world.creator_quality[~emerging].std()
    assert world.item_quality.std() == pytest.approx(0.5, rel=0.1)
    # Same content and taste, different creators: the familiar one is clicked more on average.
    items = np.arange(SMALL["num_items"])
    p = np.mean([world.click_probability(u, items, np.zeros(2)) for u in range(20)], axis=0)
    on_emerging = emerging[world.item_creator]
    assert p[~on_emerging].mean() > p[on_emerging].mean()
    with pytest.raises(ValueError, match="unknown world preset"):
        world_preset("nope")
