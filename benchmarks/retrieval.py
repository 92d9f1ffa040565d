"""Retrieval benchmark: build time, memory, single-query p50/p99, batched QPS and recall@k against exact search.

Single queries run with one OpenMP/BLAS thread, as the server runs them; batched QPS uses every core. Two catalogs,
both unit-normalized Gaussian draws:

- ``--catalog hierarchical`` (a content taxonomy): ``--genres`` genre centres, sub-genre centres around them (one
  per ``--items-per-cluster`` items) and items around those, the three levels with equal variance. A query's top-k
  are its sub-genre, then the nearest of its genre: structured at every scale, as content embeddings are, but not
  trivially clustered (a few probed IVF lists miss a tenth of them).
- ``--catalog mixture`` (a stress test): one level of clusters (one per ``--items-per-cluster`` items) plus isotropic
  noise as large as the centres. With k above the cluster size, half of a query's top-k are the far tail of
  nearly random points in d dimensions, which any approximate index has to scan a large share of the catalog for.

``--items-per-cluster`` sets the number of clusters from the catalog size, so the difficulty does not change with
scale. Each index type/parameter setting is built from the same cached vectors through the project's index
factory, then queried with held-out vectors drawn from the same distribution.

    .venv/bin/python benchmarks/retrieval.py --items 1000000 --dims 64 --items-per-cluster 100 --catalog hierarchical
    .venv/bin/python benchmarks/retrieval.py --items 1000000 --dims 64 --items-per-cluster 100 --catalog mixture
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from embeddings.base import Catalog
from embeddings.factory import IndexConfig, exact_neighbours, recall
from embeddings.index import IndexArtifact

RESULTS = Path(__file__).parent / "results"


def mixture(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        x = centers[rng.integers(clusters, size=m)] + 1.0 * rng.normal(size=(m, d)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def hierarchical(n: int, d: int, genres: int, clusters: int, seed: int) -> np.ndarray:
    """Items around sub-genre centres around genre centres, each level N(0, 1) per dimension, unit-normalized."""
    rng = np.random.default_rng(seed)
    genre = rng.normal(size=(genres, d)).astype(np.float32)
    sub = genre[rng.integers(genres, size=clusters)] + rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        x = sub[rng.integers(clusters, size=m)] + rng.normal(size=(m, d)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def catalog_of(n: int) -> Catalog:
    ids = np.array([f"i{i}" for i in range(n)], dtype=object)
    return Catalog(ids, ids, np.full(n, "", dtype=object), ((),) * n, np.zeros((n, 0)), np.ones(n), np.ones(n))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, config: IndexConfig, k: int) -> dict:
    catalog = catalog_of(len(vectors))
    started = time.perf_counter()
    artifact = IndexArtifact.build(catalog, vectors, b"", config)
    build_s = time.perf_counter() - started
    index_bytes = len(faiss.serialize_index(artifact.index))
    lat = []
    excl = []
    # Single queries with one OpenMP and one BLAS thread, as `scout serve` runs them (server.app.limit_native_threads):
    # a pool per library only spins and wakes for one query, and the serving threads give the parallelism.
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        for q in queries:
            t0 = time.perf_counter()
            artifact.search(q, k)
            lat.append(time.perf_counter() - t0)
        for strategy in ("selector", "overfetch"):
            t0 = time.perf_counter()
            for q in queries[:100]:
                artifact.search(q, k, exclude=np.arange(50), strategy=strategy)
            excl.append((time.perf_counter() - t0) / 100 * 1e3)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    found = artifact.search_many(queries, k)[1]
    batched = time.perf_counter() - t0
    return {
        "index_type": artifact.manifest["index_type"],
        "params": artifact.search_params,
        "build": artifact.manifest["index"]["build"],
        "build_seconds": round(build_s, 2),
        "index_mb": round(index_bytes / 2**20, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "batched_qps": round(len(queries) / batched, 1),
        "recall": round(recall(found, truth), 4),
        "exclude50_selector_ms": round(excl[0], 3),
        "exclude50_overfetch_ms": round(excl[1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument(
        "--items-per-cluster", type=int, default=0, help="clusters = items / this (overrides --clusters when > 0)"
    )
    parser.add_argument("--catalog", choices=("hierarchical", "mixture"), default="hierarchical")
    parser.add_argument("--genres", type=int, default=100, help="top-level centres of the hierarchical catalog")
    parser.add_argument(
        "--types", nargs="+", default=["flat", "ivf_flat", "ivf_pq", "ivf_pq_rerank", "hnsw"], help="rows to run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}",
        "items": args.items,
        "k": args.k,
        "queries": args.queries,
        "catalog": args.catalog,
        "clusters": args.items // args.items_per_cluster if args.items_per_cluster else args.clusters,
        "runs": [],
    }
    if args.catalog == "hierarchical":
        report["genres"] = args.genres
    for d in args.dims:
        if args.catalog == "hierarchical":
            data = hierarchical(args.items + args.queries, d, args.genres, report["clusters"], seed=d)
        else:
            data = mixture(args.items + args.queries, d, report["clusters"], seed=d)
        vectors, queries = data[: args.items], data[args.items :]
        truth = exact_neighbours(vectors, queries, args.k, "inner_product")
        configs = {
            "flat": [IndexConfig(index_type="flat", recall_k=args.k, recall_queries=50)],
            "ivf_flat": [
                IndexConfig(index_type="ivf_flat", recall_k=args.k),
                IndexConfig(index_type="ivf_flat", recall_k=args.k, nprobe=8, recall_queries=50),
            ],
            "ivf_pq": [IndexConfig(index_type="ivf_pq", pq_m=d // 4, recall_k=args.k, target_recall=0.8)],
            "ivf_pq_rerank": [IndexConfig(index_type="ivf_pq", pq_m=d // 2, pq_bits=4, rerank=8, recall_k=args.k)],
            "hnsw": [IndexConfig(index_type="hnsw", hnsw_m=32, recall_k=args.k)],
        }
        for kind in args.types:
            for config in configs[kind]:
                row = {"dim": d, **run(vectors, queries, truth, config, args.k), "rss_mb": round(rss_mb())}
                report["runs"].append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for row in report["runs"]:
            ax.scatter(row["p99_ms"], row["recall"], label=f"d={row['dim']} {row['index_type']} {row['params']}")
        ax.set_xscale("log")
        ax.set_xlabel(f"single-query p99 latency (ms, top-{args.k})")
        ax.set_ylabel(f"recall@{args.k} vs exact")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
