import numpy as np
import pytest

from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.evaluation import co_engagement_recall
from embeddings.text import HashedTextEncoder
from embeddings.tower import ContentTower, TowerConfig, co_engagement_pairs
from offline_eval.engagement import ColdStartSplit, cold_start_split
from offline_eval.world import SyntheticWorld, WorldConfig


@pytest.fixture(scope="module")
def setup() -> tuple[SyntheticWorld, ColdStartSplit]:
    world = SyntheticWorld(WorldConfig(num_items=1500, num_creators=75, num_users=400, seed=5))
    split = cold_start_split(world, exposures=600, per_user=20, max_pairs_per_unit=40, seed=1)
    return world, split


def config(**overrides: object) -> TowerConfig:
    base = {"dim": 16, "hidden": 64, "epochs": 3, "batch_size": 256, "device": "cpu", "seed": 3}
    return TowerConfig(**(base | overrides))  # type: ignore[arg-type]


def test_pairs_are_distinct_items_of_one_unit() -> None:
    units = np.array(["a", "a", "a", "b", "b", "c"])
    items = np.array([1, 2, 3, 4, 4, 9])
    pairs = co_engagement_pairs(units, items, max_pairs_per_unit=10, seed=0)
    assert sorted(map(tuple, np.sort(pairs, axis=1).tolist())) == [(1, 2), (1, 3), (2, 3)]
    assert len(co_engagement_pairs(units, items, max_pairs_per_unit=2, seed=0)) == 2
    with pytest.raises(ValueError, match="units has 6 rows, items has 5"):
        co_engagement_pairs(units, items[:5], 3, 0)


def test_training_is_seeded_deterministic_and_round_trips(setup: tuple[SyntheticWorld, ColdStartSplit]) -> None:
    world, split = setup
    pairs = split.train_pairs[:1000]
    runs = []
    for _ in range(2):
        tower, features = ContentTower.for_catalog(world.catalog, config(epochs=1), HashedTextEncoder(256))
        report = tower.fit(features, pairs)
        runs.append((tower, report, features))
    (a, ra, features), (b, rb, _) = runs
    assert ra.losses == rb.losses and ra.device == "cpu" and not ra.amp
    np.testing.assert_array_equal(a.encode_features(features), b.encode_features(features))
    restored = ContentTower.from_bytes(a.to_bytes(), device="cpu")
    assert restored.text_encoder == "hashed-256"
    np.testing.assert_array_equal(restored.encode_features(features), a.encode_features(features))
    vectors = a.encode_features(features)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="not a content tower"):
        ContentTower.from_bytes(ContentEncoder.for_catalog(world.catalog, EncoderConfig()).to_bytes())


@pytest.mark.slow
def test_trained_tower_retrieves_cold_items_better_than_the_untrained_encoder(
    setup: tuple[SyntheticWorld, ColdStartSplit],
) -> None:
    world, split = setup
    tower, features = ContentTower.for_catalog(world.catalog, config(), HashedTextEncoder(256))
    report = tower.fit(features, split.train_pairs)
    assert report.losses[-1] < report.losses[0]
    assert not split.cold[split.train_pairs].any(), "cold items must not appear in training pairs"
    trained = co_engagement_recall(tower.encode_features(features), split.seeds, split.cold_targets, 50)[0]
    untrained_vectors = ContentEncoder.for_catalog(world.catalog, EncoderConfig(dim=16, device="cpu")).encode(
        world.catalog
    )
    untrained = co_engagement_recall(untrained_vectors, split.seeds, split.cold_targets, 50)[0]
    assert trained > 1.2 * untrained, (trained, untrained)


@pytest.mark.slow
def test_train_tower_and_build_with_it_from_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from embeddings.builder import build_tower_artifact
    from embeddings.catalog import read_catalog
    from embeddings.index import IndexArtifact
    from server.cli import main

    catalog_path, weights, out = tmp_path / "catalog.parquet", tmp_path / "tower.npz", tmp_path / "index"
    assert main(["world", "--items", "400", "--seed", "3", "--out", str(catalog_path)]) == 0
    argv = ["train-tower", "--catalog", str(catalog_path), "--out", str(weights), "--synthetic-seed", "3"]
    assert main([*argv, "--epochs", "1", "--dim", "8", "--batch-size", "128", "--device", "cpu"]) == 0
    tower = ContentTower.from_bytes(weights.read_bytes(), device="cpu")
    assert tower.config.dim == 8 and tower.text_encoder == "hashed-256"
    assert main(["build", "--catalog", str(catalog_path), "--out", str(out), "--tower", str(weights)]) == 0
    artifact = IndexArtifact.load(out)
    catalog = read_catalog(catalog_path)
    np.testing.assert_allclose(
        artifact.vectors, tower.encode_features(tower.features(catalog, HashedTextEncoder(256))), rtol=1e-6
    )
    assert artifact.manifest["build_params"]["encoder"]["kind"] == "content_tower"
    assert ContentTower.from_bytes(artifact.encoder, device="cpu").config.dim == 8  # the weights travel with it
    assert build_tower_artifact(catalog, weights.read_bytes()).version  # the library path the CLI uses
    wrong = ["train-tower", "--catalog", str(catalog_path), "--out", str(weights), "--synthetic-seed", "4"]
    assert main(wrong) == 2  # another seed makes another catalog: refused, naming the file


def test_logged_engagements_pair_items_a_unit_rewarded() -> None:
    from offline_eval.engagement import logged_engagements
    from offline_eval.logs import SCHEMA, DecisionLog

    columns = {name: [None, None] for name in SCHEMA.names}
    columns |= {
        "unit_id": ["u1", "u2"],
        "item_ids": [["a", "b", "c"], ["a", "d"]],
        "rewards": [[1.0, 0.0, 2.0], [0.0, 1.0]],
        "reward_observed": [[True, True, True], [False, True]],
    }
    units, items = logged_engagements(DecisionLog(columns))
    assert units.tolist() == ["u1", "u1", "u2"] and items.tolist() == ["a", "c", "d"]
    pairs = co_engagement_pairs(units, np.array([0, 2, 3]), max_pairs_per_unit=5, seed=0)
    assert sorted(map(tuple, np.sort(pairs, axis=1).tolist())) == [(0, 2)]
