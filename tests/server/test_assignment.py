"""Layers, traffic, holdouts and variants: fixed vectors another language can check, shares, config errors."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from embeddings.index import IndexArtifact
from server.assignment import HOLDOUT, OUTSIDE, VARIANT, bucket, place
from server.recommender import PolicyBook, Recommender, RecommendInput
from server.settings import SettingsError, load_settings

VECTORS = Path(__file__).resolve().parents[2] / "protos" / "assignment_vectors.json"


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory):
    data = json.loads(VECTORS.read_text())
    path = tmp_path_factory.mktemp("vectors") / "scout.toml"
    path.write_text(data["config"])
    return data, load_settings(path, environ={})


def test_fixed_vectors(vectors) -> None:
    data, settings = vectors
    for case in data["cases"]:
        unit = case["unit_id"]
        # The documented formula, written out independently of server.assignment.
        digest = hashlib.sha256(f"layer:shelf:{unit}".encode()).digest()
        assert int.from_bytes(digest[:8], "big") / 2**64 == case["layer_bucket"] == bucket("layer:shelf", unit)
        placement = place(settings, data["surface"], unit)
        assert placement is not None
        experiment = placement.experiment
        assert bucket(f"{experiment.salt}:holdout", unit) == case["holdout_bucket"]
        assert bucket(experiment.salt, unit) == case["variant_bucket"]
        assert (experiment.name, placement.variant.name, placement.assignment) == (
            case["experiment"],
            case["variant"],
            case["assignment"],
        )
    assert {c["assignment"] for c in data["cases"]} == {VARIANT, HOLDOUT, OUTSIDE}


def test_layers_split_traffic_exclusively_and_holdouts_take_their_share(vectors) -> None:
    _, settings = vectors
    n = 20000
    counts = Counter()
    for k in range(n):
        placement = place(settings, "shelf", f"u{k}")
        counts[(placement.experiment.name, placement.assignment, placement.variant.name)] += 1
    share = {key: c / n for key, c in counts.items()}
    outside = sum(v for (_, a, _), v in share.items() if a == OUTSIDE)
    in_a = sum(v for (e, a, _), v in share.items() if e == "shelf-a" and a != OUTSIDE)
    in_b = sum(v for (e, _, _), v in share.items() if e == "shelf-b")
    assert abs(in_a - 0.3) < 0.015 and abs(in_b - 0.5) < 0.015 and abs(outside - 0.2) < 0.015
    held = share.get(("shelf-a", HOLDOUT, "control"), 0.0)
    assert abs(held / in_a - 0.1) < 0.02
    treated = share[("shelf-a", VARIANT, "treatment")] / (in_a - held)
    assert abs(treated - 0.75) < 0.03  # weights 1:3
    assert all(v == "control" for (_, a, v) in counts if a in (HOLDOUT, OUTSIDE))


def test_the_decision_logs_why_its_variant_served(vectors, index: IndexArtifact) -> None:
    data, settings = vectors
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=0)
    for case in data["cases"][:12]:
        decision = recommender.decide(RecommendInput(case["unit_id"], "shelf", 3, {}))
        record = decision.record
        assert (record["experiment"], record["variant"], record["assignment"]) == (
            case["experiment"],
            case["variant"],
            case["assignment"],
        )


def test_layer_and_traffic_errors_name_the_key(tmp_path: Path) -> None:
    base = json.loads(VECTORS.read_text())["config"]
    over = tmp_path / "over.toml"
    over.write_text(base.replace("traffic = 0.5", "traffic = 0.8"))
    with pytest.raises(SettingsError, match=r"experiments\[1\]\.traffic .*take 1\.1 of its traffic; at most 1"):
        load_settings(over, environ={})
    split = tmp_path / "split.toml"
    split.write_text(base.replace('layer = "shelf"\ntraffic = 0.5', 'layer = "other"\ntraffic = 0.5'))
    with pytest.raises(SettingsError, match=r"experiments\[1\]\.layer .*must share a layer"):
        load_settings(split, environ={})
    holdout = tmp_path / "holdout.toml"
    holdout.write_text(base.replace("holdout = 0.1", "holdout = 1.5"))
    with pytest.raises(SettingsError, match=r"experiments\[0\]\.holdout .*must be a number in 0\.\.0\.99"):
        load_settings(holdout, environ={})


def test_a_variant_can_define_its_own_emerging_rule(tmp_path: Path, index: IndexArtifact) -> None:
    config = tmp_path / "scout.toml"
    config.write_text(
        '[[experiments]]\nname = "e"\nsalt = "s"\nsurfaces = ["home"]\ncandidates = 20\n'
        "emerging = { popularity_quantile = 0.2, max_age_days = 90.0 }\n"
        '[[experiments.variants]]\nname = "a"\nweight = 1.0\npolicy = "epsilon_greedy"\n'
        '[[experiments.variants]]\nname = "b"\nweight = 1.0\npolicy = "epsilon_greedy"\n'
        "emerging = { popularity_quantile = 0.9, max_age_days = 3650.0 }\n"
    )
    settings = load_settings(config, environ={})
    recommender = Recommender(settings, index, PolicyBook(settings, index.dim), seed=0)
    rules: dict[str, set[str]] = {}
    flagged: dict[str, list[bool]] = {}
    for k in range(40):
        record = recommender.decide(RecommendInput(f"user-{k}", "home", 5, {})).record
        rules.setdefault(record["variant"], set()).add(record["emerging_rule"])
        flagged.setdefault(record["variant"], []).extend(record["emerging"])
    assert set(rules) == {"a", "b"} and all(len(r) == 1 for r in rules.values())
    assert json.loads(next(iter(rules["a"])))["max_age_days"] == 90.0
    assert json.loads(next(iter(rules["b"])))["max_age_days"] == 3650.0
    assert sum(flagged["b"]) / len(flagged["b"]) > sum(flagged["a"]) / len(flagged["a"])  # the looser rule flags more
