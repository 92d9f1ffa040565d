import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embeddings.builder import build_artifact
from embeddings.catalog import CatalogError, read_catalog, write_catalog
from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.index import ArtifactError, IndexArtifact
from offline_eval.world import SyntheticWorld, WorldConfig


@pytest.fixture(scope="module")
def small() -> SyntheticWorld:
    return SyntheticWorld(WorldConfig(num_items=400, num_creators=40, num_users=20, seed=3))


def test_reloaded_artifact_gives_identical_search_results(small: SyntheticWorld, tmp_path: Path) -> None:
    built = build_artifact(small.catalog, EncoderConfig(dim=16, seed=0))
    built.save(tmp_path)
    loaded = IndexArtifact.load(str(tmp_path))  # a str path works as a Path does
    assert loaded.version == built.version and loaded.manifest["index"]["recall"]["value"] == 1.0
    queries = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    for q in queries:
        a, b = built.search(q, 25), loaded.search(q, 25)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.creator_ids.tolist() == built.creator_ids.tolist()
    assert len({id(c) for c in loaded.creator_ids}) == len(set(built.creator_ids.tolist())) == 40  # one str each


def test_loaded_vectors_are_a_shared_read_only_mapping_that_a_new_save_does_not_tear(
    small: SyntheticWorld, tmp_path: Path
) -> None:
    first = build_artifact(small.catalog, EncoderConfig(dim=16, seed=0))
    first.save(tmp_path)
    served = IndexArtifact.load(tmp_path)
    assert isinstance(served.vectors.base, np.memmap) and not served.vectors.flags.writeable  # pages shared
    second = build_artifact(small.catalog, EncoderConfig(dim=16, seed=1))
    second.save(tmp_path)  # over the served files: a new vectors.npy is renamed in, the mapped one stays whole
    np.testing.assert_array_equal(served.vectors, first.vectors)
    np.testing.assert_array_equal(IndexArtifact.load(tmp_path).vectors, second.vectors)
    assert not list(tmp_path.glob(".*.tmp"))


def test_search_excludes_and_orders_by_similarity(small: SyntheticWorld) -> None:
    artifact = build_artifact(small.catalog, EncoderConfig(dim=16, seed=0))
    query = artifact.vectors[5]
    top = artifact.search(query, 10)
    assert top.positions[0] == 5 and np.all(np.diff(top.scores) <= 1e-6)
    excluded = artifact.search(query, 10, exclude=top.positions[:3])
    assert not set(excluded.positions) & set(top.positions[:3]) and len(excluded.positions) == 10


def test_encoder_is_seeded_and_every_item_gets_a_unit_vector(small: SyntheticWorld) -> None:
    catalog = small.catalog
    assert (catalog.texts == "").any() and np.isnan(catalog.descriptors).any(), "world should miss some signals"
    config = EncoderConfig(dim=16, seed=7, device="cpu")
    a = ContentEncoder.for_catalog(catalog, config).encode(catalog)
    b = ContentEncoder.for_catalog(catalog, config).encode(catalog)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    restored = ContentEncoder.from_bytes(ContentEncoder.for_catalog(catalog, config).to_bytes(), device="cpu")
    np.testing.assert_array_equal(restored.encode(catalog), a)


def test_content_similarity_survives_encoding(small: SyntheticWorld) -> None:
    vectors = build_artifact(small.catalog, EncoderConfig(dim=32, seed=0)).vectors
    latent_sim = small.item_latent @ small.item_latent.T
    content_sim = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), 1)
    assert np.corrcoef(latent_sim[upper], content_sim[upper])[0, 1] > 0.3


@pytest.mark.gpu
def test_cpu_and_cuda_builds_agree(small: SyntheticWorld) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: CPU/GPU agreement is checked only where a GPU exists")
    cpu = ContentEncoder.for_catalog(small.catalog, EncoderConfig(device="cpu")).encode(small.catalog)
    gpu = ContentEncoder.for_catalog(small.catalog, EncoderConfig(device="cuda")).encode(small.catalog)
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)


def test_broken_artifacts_name_the_file_and_problem(small: SyntheticWorld, tmp_path: Path) -> None:
    build_artifact(small.catalog, EncoderConfig(dim=16)).save(tmp_path / "ok")
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "ok", missing)
    (missing / "vectors.npy").unlink()
    with pytest.raises(ArtifactError, match=r"vectors\.npy: missing"):
        IndexArtifact.load(missing)
    wrong_dim = tmp_path / "dim"
    shutil.copytree(tmp_path / "ok", wrong_dim)
    manifest = json.loads((wrong_dim / "manifest.json").read_text())
    (wrong_dim / "manifest.json").write_text(json.dumps(manifest | {"dim": 8}))
    with pytest.raises(ArtifactError, match=r"index\.faiss: holds 400 vectors of dimension 16, manifest says 400 of"):
        IndexArtifact.load(wrong_dim)
    metric = tmp_path / "metric"
    shutil.copytree(tmp_path / "ok", metric)
    (metric / "manifest.json").write_text(json.dumps(manifest | {"metric": "cosine-ish"}))
    with pytest.raises(ArtifactError, match=r"manifest\.json: unknown metric 'cosine-ish'"):
        IndexArtifact.load(metric)


def test_catalog_round_trip_and_errors(small: SyntheticWorld, tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    write_catalog(small.catalog, path)
    back = read_catalog(path)
    np.testing.assert_array_equal(back.item_ids, small.catalog.item_ids)
    np.testing.assert_array_equal(np.isnan(back.descriptors), np.isnan(small.catalog.descriptors))
    assert back.tags == small.catalog.tags
    pq.write_table(pq.read_table(path).drop(["creator_id"]), tmp_path / "bad.parquet")
    with pytest.raises(CatalogError, match=r"bad\.parquet: missing column\(s\) creator_id"):
        read_catalog(tmp_path / "bad.parquet")
    table = pq.read_table(path)
    ids = table.column("item_id").to_pylist()
    ids[3] = ids[2]
    pq.write_table(table.set_column(0, "item_id", pa.array(ids)), tmp_path / "dup.parquet")
    with pytest.raises(CatalogError, match=r"dup\.parquet: item_ids must be unique"):
        read_catalog(tmp_path / "dup.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(CatalogError, match=r"junk\.parquet: cannot read catalog"):
        read_catalog(tmp_path / "junk.parquet")


@pytest.mark.gpu
def test_cpu_and_cuda_towers_agree(small: SyntheticWorld) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: tower CPU/GPU agreement is checked only where a GPU exists")
    from embeddings.text import HashedTextEncoder
    from embeddings.tower import ContentTower, TowerConfig

    tower, features = ContentTower.for_catalog(small.catalog, TowerConfig(dim=16, device="cpu"), HashedTextEncoder(64))
    cpu = tower.encode_features(features)
    gpu = ContentTower.from_bytes(tower.to_bytes(), device="cuda").encode_features(features)
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)
    pairs = np.stack([np.arange(0, 398, 2), np.arange(1, 399, 2)], axis=1)
    report = ContentTower.from_bytes(tower.to_bytes(), device="cuda").fit(features, pairs)
    assert report.device == "cuda" and report.amp


@pytest.mark.gpu
def test_gpu_trained_ivf_index_matches_cpu_recall() -> None:
    import faiss

    from embeddings.factory import IndexConfig, build_index, gpu_count

    if gpu_count() == 0:
        pytest.skip("the installed faiss sees no GPU (faiss-cpu, or no device): GPU index builds are not checked")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    config = IndexConfig(index_type="ivf_flat", nlist=64, nprobe=16, recall_k=50)
    _, gpu_info = build_index(x, config)
    _, cpu_info = build_index(x, IndexConfig(index_type="ivf_flat", nlist=64, nprobe=16, recall_k=50, use_gpu=False))
    assert gpu_info["build"]["gpu"] and not cpu_info["build"]["gpu"] and faiss.get_num_gpus() > 0
    assert abs(gpu_info["recall"]["value"] - cpu_info["recall"]["value"]) < 0.05
