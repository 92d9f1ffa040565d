"""A small fixed-seed version of benchmarks/ope_validation.py: coverage and RMSE against the exact truth."""

import numpy as np
import pytest
from factorized_slates import sample, slate_world

from offline_eval.estimators import create_estimators
from offline_eval.evaluation import evaluate_data


@pytest.mark.slow
@pytest.mark.parametrize("closeness", [0.5, 1.5])
def test_ips_snips_dr_cover_the_truth_and_dr_is_no_worse_than_ips(closeness: float) -> None:
    world = slate_world(seed=3, closeness=closeness)
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    covered: dict[str, list[bool]] = {"ips": [], "snips": [], "dr": []}
    for seed in range(40):
        result = evaluate_data(sample(world, 1500, seed=500 + seed), create_estimators(["ips", "snips", "dr"]))
        for e in result.estimates:
            errors[e.estimator].append(e.value - world.truth)
            covered[e.estimator].append(e.lower <= world.truth <= e.upper)
    for name in errors:
        assert np.mean(covered[name]) >= 0.85, (name, np.mean(covered[name]))
        assert abs(np.mean(errors[name])) < 3 * np.std(errors[name]) / np.sqrt(40), name
    rmse = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}
    assert rmse["dr"] <= rmse["ips"], rmse
