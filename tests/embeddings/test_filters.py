from pathlib import Path

import numpy as np
import pytest
from synthetic_vectors import catalog_of, clustered

from embeddings.factory import IndexConfig, exact_neighbours
from embeddings.index import ArtifactError, IndexArtifact

VECTORS = clustered(6000, 32, seed=1)


TYPES = [
    IndexConfig(index_type="flat"),
    IndexConfig(index_type="ivf_flat", nlist=32, nprobe=32),
    IndexConfig(index_type="ivf_flat", nlist=32, nprobe=32, fp16=True),
    IndexConfig(index_type="hnsw", hnsw_m=16, ef_search=400),
]


@pytest.mark.parametrize("strategy", ["selector", "overfetch"])
@pytest.mark.parametrize("config", TYPES, ids=lambda c: c.index_type + "_fp16" * c.fp16)
def test_exclusions_and_availability_keep_exact_results(config: IndexConfig, strategy: str) -> None:
    vectors = VECTORS[:3000]
    artifact = IndexArtifact.build(catalog_of(3000), vectors, b"", config)
    rng = np.random.default_rng(0)
    allowed = np.sort(rng.choice(3000, size=300, replace=False))
    for q in vectors[:5]:
        top = artifact.search(q, 20, strategy=strategy).positions
        excluded = artifact.search(q, 20, exclude=top[:5], strategy=strategy).positions
        assert len(excluded) == 20 and not set(excluded) & set(top[:5])
        np.testing.assert_array_equal(excluded[:15], top[5:])
        restricted = artifact.search(q, 20, allowed=allowed, exclude=allowed[:3], strategy=strategy).positions
        truth = allowed[3:][exact_neighbours(vectors[allowed[3:]], q[None], 20, "inner_product")[0]]
        assert len(restricted) == 20 and set(restricted) <= set(allowed[3:].tolist())
        assert len(set(restricted) & set(truth)) >= 19


@pytest.mark.parametrize("config", TYPES, ids=lambda c: c.index_type + "_fp16" * c.fp16)
def test_add_and_remove_keep_the_id_map(config: IndexConfig, tmp_path: Path) -> None:
    artifact = IndexArtifact.build(catalog_of(2000), VECTORS[:2000], b"", config)
    first = artifact.version
    artifact.remove_items(["item-7", "item-8"])
    assert not artifact.has("item-7") and artifact.has("item-9")
    assert artifact.positions(["item-7"]).tolist() == [7]  # logged decisions still resolve
    new = catalog_of(3, prefix="new")
    artifact.add_items(new, VECTORS[5000:5003])
    assert artifact.positions(["new-1"]).tolist() == [2001] and artifact.version != first
    top = artifact.search(VECTORS[5001], 5).positions
    assert top[0] == 2001
    assert 7 not in artifact.search(VECTORS[7], 10).positions
    assert artifact.search(VECTORS[9], 1).positions.tolist() == [9]
    with pytest.raises(ValueError, match="item id 'new-0' is already in the index"):
        artifact.add_items(catalog_of(1, prefix="new"), VECTORS[:1])
    artifact.save(tmp_path)
    loaded = IndexArtifact.load(tmp_path)
    assert loaded.manifest["removed"] == 2 and not loaded.has("item-8") and loaded.has("new-2")
    for q in VECTORS[[1, 7, 5002]]:
        np.testing.assert_array_equal(loaded.search(q, 10).positions, artifact.search(q, 10).positions)


def test_versions_publish_atomically_and_load_by_name(tmp_path: Path) -> None:
    a = IndexArtifact.build(catalog_of(500), VECTORS[:500], b"", IndexConfig())
    a.publish(tmp_path)
    b = IndexArtifact.build(catalog_of(400), VECTORS[100:500], b"", IndexConfig())
    b.publish(tmp_path)
    assert IndexArtifact.versions(tmp_path) == sorted([a.version, b.version])
    assert IndexArtifact.load(tmp_path).version == b.version  # the root follows CURRENT
    assert len(IndexArtifact.load_version(tmp_path, a.version)) == 500
    with pytest.raises(ArtifactError, match="is already published"):
        a.publish(tmp_path)
    with pytest.raises(ArtifactError, match="no such index version"):
        IndexArtifact.load_version(tmp_path, "20990101T000000Z-0000000000")
    (tmp_path / "CURRENT").write_text("../elsewhere\n")
    with pytest.raises(ArtifactError, match=r"CURRENT: '\.\./elsewhere' is not a version name"):
        IndexArtifact.load(tmp_path)
