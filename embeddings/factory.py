"""Index factory: Flat, IVF-Flat, IVF-PQ or HNSW from an :class:`IndexConfig`, with search parameters tuned at build.

Ids are item positions: IVF indexes store them natively, flat and HNSW indexes are wrapped in ``faiss.IndexIDMap``,
so items can be added and removed between full rebuilds without renumbering. IVF coarse quantizers are trained
on a seeded sample of the vectors, on the GPU when the installed faiss has GPUs (``faiss.get_num_gpus() > 0``)
and on the CPU otherwise. When ``nprobe``
or ``ef_search`` is not given, the smallest value whose recall@k against exact search reaches ``target_recall`` on
sample queries is chosen, and the sweep is recorded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)
INDEX_TYPES = ("auto", "flat", "ivf_flat", "ivf_pq", "hnsw")
METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build and how.

    Parameters
    ----------
    index_type
        ``flat`` (exact), ``ivf_flat``, ``ivf_pq``, ``hnsw`` or ``auto``: flat below ``flat_below`` items,
        ``ivf_flat`` with fp16 lists (see ``fp16``) and a tuned ``nprobe`` from there on.
    metric
        ``inner_product`` (cosine on unit vectors) or ``l2``.
    nlist
        IVF lists; ``None`` picks ``4 * sqrt(N)`` rounded to a power of two (4096 at 1M items).
    nprobe
        IVF lists visited per query; ``None`` tunes it for ``target_recall``.
    pq_m, pq_bits
        IVF-PQ sub-quantizers (must divide d) and bits per code; 4 bits scan the codes in SIMD blocks
        (``IndexIVFPQFastScan``). ``None``: 16 and 8.
    rerank
        IVF-PQ only: fetch ``rerank * k`` candidates by their codes and re-score them exactly from the stored
        vectors, keeping the best k (0, the default: the codes' approximate scores as they are).
    fp16
        IVF-Flat only: keep the vectors in the lists as 16-bit floats (``IndexIVFScalarQuantizer``, ``QT_fp16``,
        not by residual). Half the memory and half the bytes a query scans; on the 1M bench vectors the same
        recall@200 (0.928 at ``nprobe`` 128) in 0.57 ms instead of 0.83 ms on one thread. Scores are rounded to
        fp16 precision, so near-ties can order differently from float32. ``auto`` builds its IVF-Flat so;
        ``index_type="ivf_flat"`` keeps float32 lists unless this is set.
    hnsw_m, ef_construction
        HNSW graph degree and build-time beam width. ``None``: 32 and 40.
    ef_search
        HNSW search beam width; ``None`` tunes it for ``target_recall``.
    train_size
        Vectors sampled to train IVF quantizers; ``None`` uses ``min(N, 64 * nlist)``.
    target_recall, recall_k, recall_queries
        Tuning and build-time measurement: recall@k against exact search on this many sample queries.
    flat_below
        ``auto`` builds an exact index below this many items.
    use_gpu
        Train IVF quantizers on the GPU when faiss has one.
    seed
        Seed of the training and query samples.
    """

    index_type: str = "auto"
    metric: str = "inner_product"
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    rerank: int = 0
    fp16: bool = False
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    train_size: int | None = None
    target_recall: float = 0.95
    recall_k: int = 200
    recall_queries: int = 200
    flat_below: int = 50_000
    use_gpu: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for name in ("nlist", "nprobe", "ef_search", "train_size", "pq_m", "pq_bits", "hnsw_m", "ef_construction"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        for name in ("recall_k", "recall_queries", "flat_below"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.pq_bits is not None and self.pq_bits > 16:
            raise ValueError(f"pq_bits must be at most 16 (FAISS's product quantizer), got {self.pq_bits}")
        if self.rerank < 0:
            raise ValueError(f"rerank must be 0 (off) or positive, got {self.rerank}")
        if self.rerank and self.index_type != "ivf_pq":
            raise ValueError(f"rerank applies to index_type ivf_pq only, got {self.index_type!r}")
        if self.fp16 and self.index_type != "ivf_flat":
            raise ValueError(
                f"fp16 applies to index_type ivf_flat only, got {self.index_type!r} (auto builds its IVF-Flat "
                "lists in fp16 already)"
            )
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        ivf = ("ivf_flat", "ivf_pq")  # and auto, which builds IVF-Flat at scale; it never builds HNSW
        applies = {"nlist": ivf, "nprobe": ivf, "train_size": ivf, "ef_search": ("hnsw",)}
        applies |= {"pq_m": ("ivf_pq",), "pq_bits": ("ivf_pq",), "hnsw_m": ("hnsw",), "ef_construction": ("hnsw",)}
        for name, types in applies.items():  # a given option the index would ignore is a mistake worth naming
            allowed = (*types, "auto") if types == ivf else types
            if getattr(self, name) is not None and self.index_type not in allowed:
                raise ValueError(f"{name} applies to index_type {' or '.join(allowed)} only, got {self.index_type!r}")
        if self.nlist is not None and self.nprobe is not None and self.nprobe > self.nlist:
            raise ValueError(f"nprobe must be at most nlist ({self.nlist}), got {self.nprobe}")


def gpu_count() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def resolve_type(config: IndexConfig, count: int) -> str:
    """The concrete index type ``config`` asks for at ``count`` items."""
    if config.index_type != "auto":
        return config.index_type
    return "flat" if count < config.flat_below else "ivf_flat"


def fp16_lists(config: IndexConfig, kind: str) -> bool:
    """Whether an index of the resolved type ``kind`` keeps its IVF-Flat lists in fp16 (asked for, or ``auto``'s)."""
    return kind == "ivf_flat" and (config.fp16 or config.index_type == "auto")


def default_nlist(count: int) -> int:
    """``4 * sqrt(count)`` rounded to a power of two, at least 1 and at most count / 39 (FAISS's training floor)."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(count, 1)), 1)))
    return int(max(1, min(nlist, count // 39 or 1)))


def search_parameters(index: faiss.Index, params: dict[str, int], selector: Any = None) -> Any:
    """``faiss.SearchParameters`` for ``index`` (IVF: nprobe, HNSW: efSearch), optionally with an id selector."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    out: Any
    if isinstance(inner, faiss.IndexIVF):
        out = faiss.SearchParametersIVF()
        out.nprobe = int(params.get("nprobe", 1))
    elif isinstance(inner, faiss.IndexHNSW):
        out = getattr(faiss, "SearchParametersHNSW")()  # noqa: B009 - missing from faiss's type stubs
        out.efSearch = int(params.get("ef_search", 16))
    else:
        out = faiss.SearchParameters()
    if selector is not None:
        out.sel = selector
    return out


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    params: dict[str, int],
    vectors: np.ndarray,
    metric: str,
    prepared: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k scores and ids of Q queries (Q-by-k, -1 ids where fewer exist), as the search ``params`` say.

    With ``params["rerank"]`` (a re-ranking IVF-PQ), ``rerank * k`` candidates come from the codes and are
    re-scored exactly from ``vectors`` (row = id). ``prepared`` are the FAISS search parameters when the caller has
    built them (for instance with an id selector); by default they are built from ``params``.
    """
    faiss_params = prepared if prepared is not None else search_parameters(index, params)
    rerank = int(params.get("rerank", 0))
    if not rerank:
        return index.search(queries, k, params=faiss_params)
    labels = index.search(queries, k * rerank, params=faiss_params)[1]
    parts = [_rescore(queries[i : i + 64], labels[i : i + 64], k, vectors, metric) for i in range(0, len(queries), 64)]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _rescore(
    queries: np.ndarray, labels: np.ndarray, k: int, vectors: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each row's candidate ``labels`` by exact score; missing ones (-1) last, scored as FAISS does."""
    found = labels >= 0
    candidates = vectors[np.where(found, labels, 0)]
    worst = np.finfo(np.float32).max
    if metric == "inner_product":
        scores = np.where(found, np.einsum("qmd,qd->qm", candidates, queries), -worst)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.where(found, ((candidates - queries[:, None, :]) ** 2).sum(axis=2), worst)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    top = np.where(np.take_along_axis(found, order, 1), np.take_along_axis(labels, order, 1), -1)
    return np.take_along_axis(scores, order, 1).astype(np.float32), top


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k positions of each query row: Q-by-k int64."""
    exact = faiss.IndexFlat(vectors.shape[1], METRICS[metric])
    exact.add(vectors)
    return exact.search(queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact neighbours (Q-by-k) that the approximate search (Q-by-k) found."""
    hits = sum(len(set(t[t >= 0].tolist()) & set(f[f >= 0].tolist())) for t, f in zip(truth, found, strict=True))
    return hits / max(int((truth >= 0).sum()), 1)


def build_index(vectors: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """Build, fill and tune an index over N-by-d float32 ``vectors`` (ids 0..N-1).

    Returns
    -------
    index
        The chosen index (IVF) or an ``IndexIDMap`` over it (flat, HNSW), with ids 0..N-1.
    info
        What to record in the manifest: ``index_type``, ``params`` (the search parameters to use), ``build``
        (nlist, training-sample size, GPU use, timings), ``recall`` (k, queries, value) and ``tuning`` (the sweep).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = resolve_type(config, n)
    metric = METRICS[config.metric]
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    build: dict[str, Any] = {"gpu": False}
    params: dict[str, int] = {}
    if kind == "flat":
        inner: Any = faiss.IndexFlat(d, metric)
    elif kind in ("ivf_flat", "ivf_pq"):
        pq_m = 16 if config.pq_m is None else config.pq_m
        pq_bits = 8 if config.pq_bits is None else config.pq_bits
        nlist = min(config.nlist or default_nlist(n), max(n, 1))
        quantizer = faiss.IndexFlat(d, metric)
        fp16 = fp16_lists(config, kind)
        if fp16:
            qt_fp16 = faiss.ScalarQuantizer.QT_fp16
            inner = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt_fp16, metric, False)
        elif kind == "ivf_flat":
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        else:
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the vector dimension d={d}")
            pq = faiss.IndexIVFPQFastScan if pq_bits == 4 else faiss.IndexIVFPQ
            inner = pq(quantizer, d, nlist, pq_m, pq_bits, metric)
        inner.cp.seed = config.seed
        train_size = min(n, config.train_size or 64 * nlist)
        if kind == "ivf_pq" and train_size < 2**pq_bits:
            raise ValueError(
                f"pq_bits={pq_bits} needs at least {2**pq_bits} training vectors (2**pq_bits), "
                f"got {train_size}: lower pq_bits or raise train_size"
            )
        sample = vectors[np.sort(rng.choice(n, size=train_size, replace=False))] if train_size < n else vectors
        if config.use_gpu and gpu_count() > 0:
            inner.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(d, metric))
            build["gpu"] = True
        t0 = time.perf_counter()
        inner.train(sample)
        build |= {"nlist": nlist, "train_size": int(train_size), "train_seconds": round(time.perf_counter() - t0, 3)}
        if kind == "ivf_flat":
            build["storage"] = "float16" if fp16 else "float32"
        if kind == "ivf_pq":
            build |= {"pq_m": pq_m, "pq_bits": pq_bits, "fast_scan": pq_bits == 4}
            if config.rerank:
                params["rerank"] = config.rerank
        if build["gpu"]:
            inner.clustering_index = None
    elif kind == "hnsw":
        hnsw_m = 32 if config.hnsw_m is None else config.hnsw_m
        ef_construction = 40 if config.ef_construction is None else config.ef_construction
        inner = faiss.IndexHNSWFlat(d, hnsw_m, metric)
        inner.hnsw.efConstruction = ef_construction
        build |= {"m": hnsw_m, "ef_construction": ef_construction}
    else:  # pragma: no cover - IndexConfig validates the type
        raise ValueError(f"unknown index type {kind!r}")
    # IVF indexes store the ids they are given and remove without renumbering; flat and HNSW number their vectors
    # 0..n-1, so they are wrapped in an IndexIDMap (wrapping an IVF would corrupt the map on removal).
    index = inner if kind.startswith("ivf") else faiss.IndexIDMap(inner)
    t0 = time.perf_counter()
    index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
    build["add_seconds"] = round(time.perf_counter() - t0, 3)

    k = min(config.recall_k, n)
    queries = vectors[rng.choice(n, size=min(config.recall_queries, n), replace=False)] if n else vectors
    truth = exact_neighbours(vectors, queries, k, config.metric) if n else np.zeros((0, 0), np.int64)
    tuning: list[dict[str, float]] = []

    def measure(p: dict[str, int]) -> float:
        if n == 0:
            return 1.0
        p = params | p  # the re-rank factor, if any, with the value being tried
        found = search(index, queries, k, p, vectors, config.metric)[1]
        value = round(recall(found, truth), 4)
        tuning.append({**p, "recall": value})
        return value

    if kind in ("ivf_flat", "ivf_pq"):
        if config.nprobe is not None:
            params["nprobe"] = min(config.nprobe, build["nlist"])
        else:
            ladder = sorted({min(2**i, build["nlist"]) for i in range(0, int(math.log2(build["nlist"])) + 1)})
            params["nprobe"] = _tune(ladder, "nprobe", measure, config.target_recall)
    elif kind == "hnsw":
        if config.ef_search is not None:
            params["ef_search"] = config.ef_search
        else:
            ladder = sorted({max(k, e) for e in (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)})
            params["ef_search"] = _tune(ladder, "ef_search", measure, config.target_recall)
    achieved = next((t["recall"] for t in tuning if all(t[p] == v for p, v in params.items())), None)
    if achieved is None:
        achieved = measure(params)
    build["seconds"] = round(time.perf_counter() - started, 3)
    if achieved < config.target_recall:
        log.warning("%s index reaches recall@%d %.3f < target %.3f", kind, k, achieved, config.target_recall)
    info = {
        "index_type": kind,
        "metric": config.metric,
        "params": params,
        "build": build,
        "recall": {"k": k, "queries": len(queries), "value": achieved, "target": config.target_recall},
        "tuning": tuning,
    }
    log.info("built %s index over %d vectors: %s, recall@%d %.4f", kind, n, params, k, achieved)
    return index, info


def _tune(ladder: list[int], name: str, measure: Any, target: float) -> int:
    """The first value on ``ladder`` whose measured recall reaches ``target`` (else the last)."""
    for value in ladder:
        if measure({name: value}) >= target:
            return value
    return ladder[-1]
