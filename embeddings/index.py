"""A versioned FAISS retrieval artifact: one directory holding the index, the id map and a manifest.

Files:

- ``index.faiss``: the FAISS index over item positions 0..N-1 (FAISS's own format);
- ``vectors.npy``: the N-by-d float32 content vectors (policies build features from them);
- ``items.parquet``: position -> ``item_id``, ``creator_id``, ``creator_popularity``, ``creator_age_days``;
- ``encoder.npz``: the content encoder's weights, so new items are encoded the same way;
- ``manifest.json``: ``version``, ``dim``, ``metric``, ``index_type``, ``count``, build parameters, build time and
  the recall@k against exact search measured at build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.base import Catalog

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
FILES = ("manifest.json", "index.faiss", "vectors.npy", "items.parquet", "encoder.npz")


class ArtifactError(ValueError):
    """An index artifact is missing a file or is inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of one query: k item positions and k similarities, best first."""

    positions: np.ndarray
    scores: np.ndarray


class IndexArtifact:
    """A loaded (or freshly built) retrieval index with its id map and item facts.

    Use :meth:`build` or :meth:`load`; both give the same object.
    """

    def __init__(
        self,
        index: faiss.Index,
        vectors: np.ndarray,
        items: dict[str, np.ndarray],
        encoder: bytes,
        manifest: dict[str, Any],
    ) -> None:
        self.index = index
        self.vectors = vectors
        self.item_ids: np.ndarray = items["item_id"]
        self.creator_ids: np.ndarray = items["creator_id"]
        self.creator_popularity: np.ndarray = items["creator_popularity"]
        self.creator_age_days: np.ndarray = items["creator_age_days"]
        self.encoder = encoder
        self.manifest = manifest
        self._position = {item: i for i, item in enumerate(self.item_ids.tolist())}
        self._catalog_mean: np.ndarray | None = None

    @property
    def version(self) -> str:
        """The artifact's version string (build time and content hash)."""
        return str(self.manifest["version"])

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(
        cls, catalog: Catalog, vectors: np.ndarray, encoder: bytes, metric: str = "inner_product", recall_k: int = 10
    ) -> IndexArtifact:
        """Index N content vectors (N-by-d) of ``catalog`` exactly (flat) and measure recall@k on a sample."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if vectors.shape[0] != len(catalog):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(catalog)} catalog items")
        started = time.perf_counter()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexFlat(vectors.shape[1], METRICS[metric])
        index.add(vectors)
        digest = hashlib.sha256(vectors.tobytes() + "\0".join(catalog.item_ids.tolist()).encode()).hexdigest()
        built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "version": f"{built_at.replace('-', '').replace(':', '')}-{digest[:10]}",
            "dim": int(vectors.shape[1]),
            "metric": metric,
            "index_type": "flat",
            "count": len(catalog),
            "build_params": {},
            "built_at": built_at,
        }
        items = {
            "item_id": catalog.item_ids,
            "creator_id": catalog.creator_ids,
            "creator_popularity": catalog.creator_popularity,
            "creator_age_days": catalog.creator_age_days,
        }
        artifact = cls(index, vectors, items, encoder, manifest)
        manifest["build_seconds"] = round(time.perf_counter() - started, 3)
        manifest[f"recall_at_{recall_k}"] = artifact.measure_recall(recall_k)
        return artifact

    def measure_recall(self, k: int, queries: int = 200, seed: int = 0) -> float:
        """Recall@k of this index against exact search, on ``queries`` catalog vectors used as queries."""
        if len(self) == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        sample = self.vectors[rng.choice(len(self), size=min(queries, len(self)), replace=False)]
        exact = faiss.IndexFlat(self.dim, METRICS[self.manifest["metric"]])
        exact.add(self.vectors)
        k = min(k, len(self))
        _, truth = exact.search(sample, k)
        _, found = self.index.search(sample, k)
        hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
        return round(hits / truth.size, 4)

    def save(self, directory: Path) -> None:
        """Write the artifact's files into ``directory`` (created if needed)."""
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "index.faiss"))
        np.save(directory / "vectors.npy", self.vectors, allow_pickle=False)
        table = pa.table(
            {
                "item_id": pa.array(self.item_ids.tolist(), pa.string()),
                "creator_id": pa.array(self.creator_ids.tolist(), pa.string()),
                "creator_popularity": pa.array(self.creator_popularity, pa.float64()),
                "creator_age_days": pa.array(self.creator_age_days, pa.float64()),
            }
        )
        pq.write_table(table, directory / "items.parquet")
        (directory / "encoder.npz").write_bytes(self.encoder)
        (directory / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        log.info("saved index %s (%d items, d=%d) to %s", self.version, len(self), self.dim, directory)

    @classmethod
    def load(cls, directory: Path) -> IndexArtifact:
        """Load and cross-check an artifact directory; any problem raises ``ArtifactError`` naming the file."""
        for name in FILES:
            if not (directory / name).is_file():
                raise ArtifactError(f"{directory / name}: missing (an index artifact needs {', '.join(FILES)})")
        manifest_path = directory / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
            dim, count, metric = int(manifest["dim"]), int(manifest["count"]), manifest["metric"]
            str(manifest["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{manifest_path}: malformed manifest ({exc!r})") from exc
        if manifest.get("format") != FORMAT_VERSION:
            raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT_VERSION}")
        if metric not in METRICS:
            raise ArtifactError(f"{manifest_path}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        try:
            index = faiss.read_index(str(directory / "index.faiss"))
        except RuntimeError as exc:
            raise ArtifactError(f"{directory / 'index.faiss'}: unreadable FAISS index ({exc})") from exc
        if index.d != dim or index.ntotal != count or index.metric_type != METRICS[metric]:
            raise ArtifactError(
                f"{directory / 'index.faiss'}: holds {index.ntotal} vectors of dimension {index.d}, "
                f"manifest says {count} of dimension {dim} ({metric})"
            )
        try:
            vectors = np.load(directory / "vectors.npy", allow_pickle=False)
        except ValueError as exc:
            raise ArtifactError(f"{directory / 'vectors.npy'}: unreadable ({exc})") from exc
        if vectors.shape != (count, dim):
            raise ArtifactError(f"{directory / 'vectors.npy'}: shape {vectors.shape}, manifest says ({count}, {dim})")
        try:
            table = pq.read_table(directory / "items.parquet")
            items = {c: np.array(table.column(c).to_pylist(), dtype=object) for c in ("item_id", "creator_id")}
            for c in ("creator_popularity", "creator_age_days"):
                items[c] = table.column(c).to_numpy().astype(np.float64)
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise ArtifactError(f"{directory / 'items.parquet'}: unreadable id map ({exc})") from exc
        if len(items["item_id"]) != count:
            raise ArtifactError(f"{directory / 'items.parquet'}: {len(items['item_id'])} rows, manifest says {count}")
        return cls(index, vectors, items, (directory / "encoder.npz").read_bytes(), manifest)

    def has(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the index."""
        return item_id in self._position

    def positions(self, item_ids: list[str]) -> np.ndarray:
        """Positions of known item ids; unknown ids raise ``KeyError`` naming the first one."""
        try:
            return np.array([self._position[i] for i in item_ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"unknown item id {exc.args[0]!r}") from None

    def query(self, seed_positions: np.ndarray) -> np.ndarray:
        """Retrieval query: the normalized mean vector of the seed items, or of the whole catalog without seeds."""
        if len(seed_positions) == 0:
            if self._catalog_mean is None:
                self._catalog_mean = self.vectors.mean(axis=0, dtype=np.float64)
            mean = self._catalog_mean
        else:
            mean = self.vectors[seed_positions].mean(axis=0, dtype=np.float64)
        norm = np.linalg.norm(mean)
        return (mean / norm if norm > 0 else mean).astype(np.float32)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> SearchResult:
        """Top-k positions for one d-dimensional query, skipping the positions in ``exclude``."""
        excluded = set() if exclude is None else set(exclude.tolist())
        want = min(k + len(excluded), len(self))
        scores, positions = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), want)
        keep = [j for j, p in enumerate(positions[0]) if p >= 0 and p not in excluded][:k]
        return SearchResult(positions=positions[0, keep].astype(np.int64), scores=scores[0, keep])
