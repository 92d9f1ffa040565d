"""What search caches per artifact (removed count, unfiltered parameters) follows removals made after a search."""

import pytest
from synthetic_vectors import catalog_of, clustered

from embeddings.factory import IndexConfig
from embeddings.index import IndexArtifact

VECTORS = clustered(1500, 16, seed=2)


@pytest.mark.parametrize(
    "config",
    [IndexConfig(index_type="ivf_flat", nlist=16, nprobe=16), IndexConfig(index_type="hnsw", hnsw_m=16, ef_search=64)],
    ids=lambda c: c.index_type,
)
def test_a_removal_after_searching_is_honoured(config: IndexConfig) -> None:
    artifact = IndexArtifact.build(catalog_of(1500), VECTORS, b"", config)
    for strategy in ("selector", "overfetch"):
        assert artifact.search(VECTORS[7], 10, strategy=strategy).positions[0] == 7  # caches filled
    artifact.remove_items(["item-7"])
    for strategy in ("selector", "overfetch"):
        found = artifact.search(VECTORS[7], 10, strategy=strategy).positions
        assert 7 not in found and len(found) == 10
    assert artifact.search_many(VECTORS[7:8], 3)[1].shape == (1, 3)
