import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from synthetic_vectors import catalog_of, clustered

from embeddings.factory import (
    IndexConfig,
    build_index,
    default_nlist,
    exact_neighbours,
    recall,
    resolve_type,
    search,
    search_parameters,
)
from embeddings.index import ArtifactError, IndexArtifact

VECTORS = clustered(6000, 32, seed=1)


@pytest.mark.parametrize(
    ("config", "param"),
    [
        (IndexConfig(index_type="flat", recall_k=50), None),
        (IndexConfig(index_type="ivf_flat", nlist=64, recall_k=50), "nprobe"),
        (IndexConfig(index_type="ivf_flat", nlist=64, recall_k=50, fp16=True), "nprobe"),
        (IndexConfig(index_type="ivf_pq", nlist=64, pq_m=8, pq_bits=6, recall_k=50, target_recall=0.5), "nprobe"),
        (IndexConfig(index_type="hnsw", hnsw_m=16, recall_k=50), "ef_search"),
    ],
)
def test_each_index_type_reaches_its_tuned_recall_and_records_it(config: IndexConfig, param: str | None) -> None:
    index, info = build_index(VECTORS, config)
    assert info["index_type"] == config.index_type and index.ntotal == len(VECTORS)
    noisy = VECTORS[::60] + 0.1 * np.random.default_rng(9).normal(size=(100, 32)).astype(np.float32)
    queries = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    truth = exact_neighbours(VECTORS, queries, 50, "inner_product")
    found = index.search(queries, 50, params=search_parameters(index, info["params"]))[1]
    measured = recall(found, truth)
    assert info["recall"]["value"] >= config.target_recall
    assert measured >= config.target_recall - 0.1, "recall on fresh queries should match the build-time figure"
    if param is None:
        assert info["params"] == {} and info["recall"]["value"] == 1.0
    else:
        assert param in info["params"] and info["tuning"][-1][param] == info["params"][param]
        # The tuned value is the smallest on the ladder that reached the target.
        assert all(t["recall"] < config.target_recall for t in info["tuning"][:-1])
    if config.index_type.startswith("ivf"):
        assert info["build"]["nlist"] == 64 and info["build"]["train_size"] == min(6000, 64 * 64)
        assert info["build"]["gpu"] is (faiss.get_num_gpus() > 0)


def test_fp16_ivf_keeps_half_the_bytes_and_the_recall_of_float32(tmp_path: Path) -> None:
    wide, narrow = (IndexConfig(index_type="ivf_flat", nlist=32, nprobe=8, fp16=fp16) for fp16 in (False, True))
    (full, full_info), (half, half_info) = build_index(VECTORS, wide), build_index(VECTORS, narrow)
    assert isinstance(faiss.downcast_index(half), faiss.IndexIVFScalarQuantizer)
    assert (full_info["build"]["storage"], half_info["build"]["storage"]) == ("float32", "float16")
    sizes = [len(faiss.serialize_index(index)) for index in (full, half)]
    assert sizes[1] < 0.6 * sizes[0], sizes
    assert abs(half_info["recall"]["value"] - full_info["recall"]["value"]) <= 0.01
    # the artifact reloads it and searches the same; scores within fp16 rounding of the float32 ones
    artifact = IndexArtifact.build(catalog_of(len(VECTORS)), VECTORS, b"", narrow)
    artifact.save(tmp_path)
    loaded = IndexArtifact.load(tmp_path)
    queries = VECTORS[:20]
    for q in queries:
        np.testing.assert_array_equal(loaded.search(q, 20).positions, artifact.search(q, 20).positions)
    scores_full = full.search(queries, 5, params=search_parameters(full, full_info["params"]))[0]
    scores_half = half.search(queries, 5, params=search_parameters(half, half_info["params"]))[0]
    np.testing.assert_allclose(scores_half, scores_full, atol=2e-3)


def test_auto_is_exact_for_small_catalogs_and_ivf_at_scale() -> None:
    assert resolve_type(IndexConfig(), 20_000) == "flat"
    assert resolve_type(IndexConfig(), 1_000_000) == "ivf_flat"
    assert default_nlist(1_000_000) == 4096 and default_nlist(100) == 2


def test_auto_builds_its_ivf_flat_in_fp16_and_explicit_ivf_flat_in_float32() -> None:
    auto, auto_info = build_index(VECTORS, IndexConfig(flat_below=1000, nlist=32, nprobe=8))
    assert isinstance(faiss.downcast_index(auto), faiss.IndexIVFScalarQuantizer)
    assert faiss.downcast_index(auto).code_size == 2 * VECTORS.shape[1]  # bytes per vector in the lists
    assert (auto_info["index_type"], auto_info["build"]["storage"]) == ("ivf_flat", "float16")
    plain, plain_info = build_index(VECTORS, IndexConfig(index_type="ivf_flat", nlist=32, nprobe=8))
    assert isinstance(faiss.downcast_index(plain), faiss.IndexIVFFlat)
    assert plain_info["build"]["storage"] == "float32"
    _, small_info = build_index(VECTORS[:500], IndexConfig(nlist=4))
    assert small_info["index_type"] == "flat" and "storage" not in small_info["build"]


def test_bad_configs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="index_type must be one of"):
        IndexConfig(index_type="annoy")
    with pytest.raises(ValueError, match="nprobe must be positive"):
        IndexConfig(nprobe=0)
    with pytest.raises(ValueError, match=r"pq_m=7 must divide the vector dimension d=32"):
        build_index(VECTORS[:500], IndexConfig(index_type="ivf_pq", nlist=4, pq_m=7))


def test_artifact_manifest_records_build_and_reloads(tmp_path: Path) -> None:
    config = IndexConfig(index_type="ivf_flat", nlist=32, train_size=2000, recall_k=100)
    artifact = IndexArtifact.build(catalog_of(len(VECTORS)), VECTORS, b"", config)
    artifact.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["index_type"] == "ivf_flat" and manifest["index"]["build"]["train_size"] == 2000
    assert manifest["index"]["recall"]["k"] == 100 and manifest["recall_at_100"] >= 0.95
    loaded = IndexArtifact.load(tmp_path)
    assert loaded.search_params == artifact.search_params
    for q in VECTORS[:10]:
        np.testing.assert_array_equal(loaded.search(q, 20).positions, artifact.search(q, 20).positions)
    assert artifact.measure_recall(100) >= 0.95


def test_unknown_index_type_and_unreadable_index_name_the_file(tmp_path: Path) -> None:
    IndexArtifact.build(catalog_of(300), VECTORS[:300], b"", IndexConfig()).save(tmp_path / "ok")
    bad = tmp_path / "type"
    shutil.copytree(tmp_path / "ok", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(manifest | {"index_type": "scann"}))
    with pytest.raises(ArtifactError, match=r"manifest\.json: unknown index_type 'scann'"):
        IndexArtifact.load(bad)
    junk = tmp_path / "junk"
    shutil.copytree(tmp_path / "ok", junk)
    (junk / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"index\.faiss: unreadable FAISS index"):
        IndexArtifact.load(junk)
    short = tmp_path / "short"
    shutil.copytree(tmp_path / "ok", short)
    np.save(short / "vectors.npy", VECTORS[:299])
    with pytest.raises(ArtifactError, match=r"vectors\.npy: shape \(299, 32\), manifest says \(300, 32\)"):
        IndexArtifact.load(short)


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_reranked_fast_scan_ivf_pq_returns_exact_scores_and_finds_more(metric: str) -> None:
    """4-bit codes scanned in SIMD blocks, then ``rerank * k`` candidates re-scored exactly: better recall than the
    codes alone at the same nprobe, and the scores are the exact ones, best first."""

    def config(rerank: int) -> IndexConfig:
        return IndexConfig("ivf_pq", metric, nlist=64, nprobe=8, pq_m=16, pq_bits=4, rerank=rerank, recall_k=50)

    plain, plain_info = build_index(VECTORS, config(0))
    ranked, info = build_index(VECTORS, config(8))
    assert isinstance(faiss.downcast_index(ranked), faiss.IndexIVFPQFastScan) and info["build"]["fast_scan"]
    assert info["params"] == {"nprobe": 8, "rerank": 8}
    assert info["recall"]["value"] > plain_info["recall"]["value"] + 0.1
    queries = VECTORS[::300]
    truth = exact_neighbours(VECTORS, queries, 50, metric)
    scores, found = search(ranked, queries, 50, info["params"], VECTORS, metric)
    assert recall(found, truth) > recall(
        plain.search(queries, 50, params=search_parameters(plain, {"nprobe": 8}))[1], truth
    )
    q = np.repeat(queries[:, None, :], 50, axis=1)
    exact = (VECTORS[found] * q).sum(-1) if metric == "inner_product" else ((VECTORS[found] - q) ** 2).sum(-1)
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-5)
    step = np.diff(scores, axis=1)
    assert (step <= 1e-6).all() if metric == "inner_product" else (step >= -1e-6).all()


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_reranked_search_pads_missing_results_as_faiss_does(metric: str) -> None:
    """Fewer candidates than k (one probed list): the missing ids are -1, last, scored like FAISS's padding."""
    config = IndexConfig("ivf_pq", metric, nlist=64, nprobe=1, pq_m=16, pq_bits=4, rerank=2, recall_k=10)
    index, info = build_index(VECTORS, config)
    scores, ids = search(index, VECTORS[:3], 1000, info["params"], VECTORS, metric)
    assert scores.shape == ids.shape == (3, 1000) and scores.dtype == np.float32
    missing = ids < 0
    assert missing.any() and (missing[:, 1:] >= missing[:, :-1]).all(), "missing ids come last"
    worst = np.finfo(np.float32).max
    np.testing.assert_array_equal(scores[missing], -worst if metric == "inner_product" else worst)
    assert np.abs(scores[~missing]).max() < 100


def test_reranked_artifact_filters_removes_and_reloads(tmp_path: Path) -> None:
    """A re-ranking fast-scan IVF-PQ artifact honours exclusions (both strategies), removal and a save/load."""
    config = IndexConfig(index_type="ivf_pq", nlist=64, nprobe=16, pq_m=16, pq_bits=4, rerank=4, recall_k=50)
    artifact = IndexArtifact.build(catalog_of(len(VECTORS)), VECTORS, b"", config)
    query = VECTORS[7]
    top = artifact.search(query, 20).positions
    assert top[0] == 7
    for strategy in ("selector", "overfetch"):
        result = artifact.search(query, 20, exclude=top[:5], strategy=strategy)
        assert not set(result.positions.tolist()) & set(top[:5].tolist()) and len(result.positions) == 20
        np.testing.assert_allclose(result.scores, VECTORS[result.positions] @ query, rtol=1e-5, atol=1e-5)
    artifact.remove_items(artifact.item_ids[top[:3]].tolist())
    assert artifact.index.ntotal == len(VECTORS) - 3
    artifact.save(tmp_path / "a")
    again = IndexArtifact.load(tmp_path / "a")
    assert again.search_params == {"nprobe": 16, "rerank": 4}
    kept = again.search(query, 20).positions
    assert not set(kept.tolist()) & set(top[:3].tolist())
    np.testing.assert_array_equal(kept[:10], top[3:13])


def test_pq_bits_are_checked_against_faiss_and_the_training_sample() -> None:
    with pytest.raises(ValueError, match=r"pq_bits must be at most 16 \(FAISS's product quantizer\), got 20"):
        IndexConfig(index_type="ivf_pq", pq_bits=20)
    with pytest.raises(ValueError, match=r"pq_bits=12 needs at least 4096 training vectors \(2\*\*pq_bits\), got 256"):
        build_index(VECTORS[:500], IndexConfig(index_type="ivf_pq", nlist=4, pq_m=8, pq_bits=12))


def test_options_the_index_would_ignore_are_refused() -> None:
    # scout build --index-type flat --nlist 1000 built a flat index and said nothing
    for index_type in ("flat", "hnsw"):
        for name in ("nlist", "nprobe", "train_size"):
            with pytest.raises(ValueError, match=f"{name} applies to index_type ivf_flat or ivf_pq or auto only"):
                IndexConfig(index_type=index_type, **{name: 8})
    with pytest.raises(ValueError, match="ef_search applies to index_type hnsw only, got 'ivf_flat'"):
        IndexConfig(index_type="ivf_flat", ef_search=64)
    with pytest.raises(ValueError, match=r"nprobe must be at most nlist \(16\), got 17"):
        IndexConfig(index_type="ivf_flat", nlist=16, nprobe=17)
    with pytest.raises(ValueError, match="ef_search applies to index_type hnsw only, got 'auto'"):
        IndexConfig(ef_search=64)  # auto builds flat or IVF-Flat
    IndexConfig(nlist=16, nprobe=16, train_size=100)  # auto builds IVF-Flat at scale
    # scout build --index-type ivf_flat --m 64 built IVF-Flat and said nothing: the options had defaults
    for index_type in ("auto", "flat", "ivf_flat", "hnsw"):
        for name in ("pq_m", "pq_bits"):
            with pytest.raises(ValueError, match=f"{name} applies to index_type ivf_pq only, got '{index_type}'"):
                IndexConfig(index_type=index_type, **{name: 4})
    for index_type in ("auto", "flat", "ivf_flat", "ivf_pq"):
        for name in ("hnsw_m", "ef_construction"):
            with pytest.raises(ValueError, match=f"{name} applies to index_type hnsw only, got '{index_type}'"):
                IndexConfig(index_type=index_type, **{name: 16})


def test_rerank_is_for_ivf_pq_only() -> None:
    with pytest.raises(ValueError, match="fp16 applies to index_type ivf_flat only, got 'auto'"):
        IndexConfig(fp16=True)
    with pytest.raises(ValueError, match="rerank applies to index_type ivf_pq only, got 'hnsw'"):
        IndexConfig(index_type="hnsw", rerank=4)
    with pytest.raises(ValueError, match=r"rerank must be 0 \(off\) or positive, got -1"):
        IndexConfig(index_type="ivf_pq", rerank=-1)
