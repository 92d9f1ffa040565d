"""Every estimator against an exact truth on slates whose length varies (the old SNIPS bug)."""

import numpy as np
import pytest
from factorized_slates import sample, slate_world

from offline_eval.estimators import ESTIMATORS, create_estimators
from offline_eval.evaluation import evaluate_data
from offline_eval.snips import SNIPS


def test_every_estimator_is_unbiased_on_slates_of_varying_length() -> None:
    world = slate_world(seed=3)
    data = sample(world, 60_000, seed=4)
    assert len(set(data.lengths().tolist())) == 3
    result = evaluate_data(data, create_estimators(["all"]), seed=0)
    assert {e.estimator for e in result.estimates} == set(ESTIMATORS)
    for e in result.estimates:
        assert abs(e.value - world.truth) < 4 * e.std_error + 2e-3, (e, world.truth)
        assert e.lower <= world.truth <= e.upper or abs(e.value - world.truth) < 3 * e.std_error, e
        assert e.flags == ()


def test_snips_with_the_logging_policy_as_target_is_the_logged_mean() -> None:
    # The case: target == logger on 1-3 item slates; every weight is one, so SNIPS must be the mean total.
    world = slate_world(seed=5)
    data = sample(world, 5_000, seed=6)
    same = type(data)(
        data.logged_propensity,
        data.logged_propensity * data.mask,
        data.reward,
        data.mask,
        data.logged_features,
        data.logged_features,
        (0.0, 1.0),
    )
    logged_mean = data.reward.sum(axis=1).mean()
    assert SNIPS().estimate(same).value == pytest.approx(logged_mean)


def test_an_estimate_outside_the_reward_range_is_flagged() -> None:
    world = slate_world(seed=7, closeness=3.0)
    data = sample(world, 30, seed=8)
    boosted = type(data)(
        data.logged_propensity * 0.01 / data.logged_propensity.max(),
        np.where(data.mask, 1.0, 0.0),
        np.where(data.mask, 1.0, 0.0),
        data.mask,
        data.logged_features,
        data.target_features,
        (0.0, 1.0),
    )
    estimate = create_estimators(["ips"])[0].estimate(boosted)
    assert estimate.value > 3
    assert any("outside" in f for f in estimate.flags)
