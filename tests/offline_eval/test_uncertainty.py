"""Intervals (normal and Poisson bootstrap), mergeable statistics and per-slot diagnostics."""

import numpy as np
import pytest
from factorized_slates import SlateWorld, sample, slate_world

from offline_eval.base import SlateData, Terms
from offline_eval.estimators import create_estimators
from offline_eval.evaluation import evaluate_data
from offline_eval.statistics import Statistics, poisson_counts
from offline_eval.summary import ZERO_WIDTH


def test_poisson_counts_have_the_poisson_one_moments() -> None:
    counts = poisson_counts(np.random.default_rng(0), 50, 20_000)
    assert counts.mean() == pytest.approx(1.0, abs=0.005)
    assert counts.var() == pytest.approx(1.0, abs=0.01)
    assert (counts == 0).mean() == pytest.approx(np.exp(-1), abs=0.003)


def test_bootstrap_and_normal_intervals_agree_and_cover() -> None:
    world = slate_world(seed=11)
    data = sample(world, 20_000, seed=12)
    normal = evaluate_data(data, create_estimators(["ips", "snips", "dr"]), seed=1)
    boot = evaluate_data(data, create_estimators(["ips", "snips", "dr"]), bootstrap=200, seed=1)
    for n, b in zip(normal.estimates, boot.estimates, strict=True):
        assert b.value == pytest.approx(n.value)
        assert b.interval == "bootstrap(200)" and n.interval == "normal"
        width = n.upper - n.lower
        assert abs(b.lower - n.lower) < 0.15 * width and abs(b.upper - n.upper) < 0.15 * width, (n, b)
        assert n.lower <= world.truth <= n.upper


def test_statistics_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(3)
    num, den = rng.normal(size=(1000, 3)), rng.uniform(0.5, 1.5, size=(1000, 3))
    whole = Statistics(3, 20, seed=5)
    left, right = Statistics(3, 20, seed=5), Statistics(3, 20, seed=5)
    for key, start in enumerate(range(0, 1000, 250)):
        part = Terms(num[start : start + 250], den[start : start + 250])
        whole.add(part, key)
        (left if key % 2 else right).add(part, key)
    merged = right.merge(left)
    assert merged.value() == pytest.approx(whole.value(), rel=1e-12)
    assert merged.std_error() == pytest.approx(whole.std_error(), rel=1e-9)
    np.testing.assert_allclose(merged.replicates(), whole.replicates(), rtol=1e-12)


def test_delta_method_standard_error_matches_the_spread_across_seeds() -> None:
    world = slate_world(seed=13)
    values, errors = [], []
    for seed in range(40):
        e = evaluate_data(sample(world, 2_000, seed=100 + seed), create_estimators(["snips"])).estimates[0]
        values.append(e.value)
        errors.append(e.std_error)
    assert np.mean(errors) == pytest.approx(np.std(values), rel=0.3)


def test_a_thin_later_slot_is_warned_about_even_when_slot_zero_is_fine() -> None:
    base = slate_world(seed=17)
    target = base.logging.copy()
    target[1:] = np.eye(base.logging.shape[1])[np.argmin(base.logging[1:], axis=1)] * 0.97 + 0.03 / 5
    world = SlateWorld(base.logging, target, base.click, base.length_p)
    result = evaluate_data(sample(world, 3_000, seed=18))
    d = result.diagnostics
    assert d.ess_per_slot[0] == pytest.approx(3_000, rel=0.01)
    assert d.ess_per_slot[2] < 0.1 * d.served_per_slot[2]
    assert any(w.startswith("slot 2: effective sample size") for w in d.warnings)
    assert not any(w.startswith("slot 0:") for w in d.warnings)


def test_an_interval_of_zero_width_is_flagged() -> None:
    """No reward at all in a sparse-click log: every estimator says 0 with a [0, 0] interval, which is flagged."""
    data = sample(slate_world(seed=19), 400, seed=20)
    silent = SlateData(
        data.logged_propensity,
        data.target_propensity,
        np.zeros_like(data.reward),
        data.mask,
        data.logged_features,
        data.target_features,
    )
    names = ["ips", "snips", "dr", "replay"]
    for e in evaluate_data(silent, create_estimators(names)).estimates:
        assert (e.value, e.lower, e.upper) == (0.0, 0.0, 0.0), e
        assert ZERO_WIDTH in e.flags, e
    for e in evaluate_data(data, create_estimators(names)).estimates:
        assert e.lower < e.upper and ZERO_WIDTH not in e.flags, e
    ones, same = np.ones((300, 2)), np.full((300, 2), 0.7)  # every decision earns 1.4: a width of rounding only
    constant = SlateData(ones * 0.5, ones * 0.5, same, ones > 0, np.zeros((300, 2, 1)), np.zeros((300, 2, 1)))
    for bootstrap in (0, 50):
        for e in evaluate_data(constant, create_estimators(["ips", "snips"]), bootstrap).estimates:
            assert e.value == pytest.approx(1.4) and ZERO_WIDTH in e.flags, e
    single = SlateData(ones[:1] * 0.5, ones[:1] * 0.4, same[:1], ones[:1] > 0, np.zeros((1, 2, 1)), np.zeros((1, 2, 1)))
    (e,) = evaluate_data(single, create_estimators(["snips"])).estimates
    assert any(f.startswith("the interval is not finite") for f in e.flags), e
