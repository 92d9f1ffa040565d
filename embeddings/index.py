"""A versioned FAISS retrieval artifact: one directory holding the index, the id map and a manifest.

Files:

- ``index.faiss``: the FAISS index whose ids are item positions (IVF natively, flat and HNSW inside an
  ``IndexIDMap``; FAISS's own format);
- ``vectors.npy``: the N-by-d float32 content vectors (policies build features from them);
- ``items.parquet``: position -> ``item_id``, ``creator_id``, ``creator_popularity``, ``creator_age_days``,
  ``removed`` (items taken out since the full build keep their position, so positions never shift);
- ``encoder.npz``: the content encoder's weights, so new items are encoded the same way;
- ``manifest.json``: ``version``, ``dim``, ``metric``, ``index_type``, ``count``, the index's search parameters,
  training-sample size, build time and the recall@k against exact search measured at build.

Versions: :meth:`IndexArtifact.publish` writes an artifact to ``root/<version>/`` and then points ``root/CURRENT``
at it (an atomic rename), so a reader never sees a half-written index; :meth:`IndexArtifact.load_version` loads
the current or a named version, and :meth:`IndexArtifact.load` given ``root`` follows ``CURRENT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.base import Catalog
from embeddings.factory import INDEX_TYPES, METRICS, IndexConfig, build_index, search, search_parameters

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
FILES = ("manifest.json", "index.faiss", "vectors.npy", "items.parquet", "encoder.npz")
CURRENT = "CURRENT"
STRATEGIES = ("selector", "overfetch")


class ArtifactError(ValueError):
    """An index artifact is missing a file or is inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of one query: k item positions and k similarities, best first."""

    positions: np.ndarray
    scores: np.ndarray


def _new_version(digest_input: bytes) -> tuple[str, str]:
    built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    digest = hashlib.sha256(digest_input).hexdigest()
    return f"{built_at.replace('-', '').replace(':', '')}-{digest[:10]}", built_at


def _shared_strings(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as an object array in which equal strings are one object.

    Creator ids repeat (1M items by 50k creators: one ``str`` per item made every process 40 MB larger).
    """
    encoded = column.combine_chunks().dictionary_encode()
    if encoded.null_count:
        return np.array(column.to_pylist(), dtype=object)
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


class IndexArtifact:
    """A loaded (or freshly built) retrieval index with its id map and item facts.

    Use :meth:`build`, :meth:`load` or :meth:`load_version`; all give the same object.
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
        self.removed: np.ndarray = items.get("removed", np.zeros(len(self.item_ids), dtype=bool)).astype(bool)
        self.encoder = encoder
        self.manifest = manifest
        self._position = {item: i for i, item in enumerate(self.item_ids.tolist())}
        self._catalog_mean: np.ndarray | None = None
        self._live_bits: np.ndarray | None = None
        self._n_removed: int | None = None
        self._plain_params: Any = None

    @property
    def version(self) -> str:
        """The artifact's version string (build time and content hash)."""
        return str(self.manifest["version"])

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self.manifest["dim"])

    @property
    def search_params(self) -> dict[str, int]:
        """The index's search parameters: ``nprobe`` (IVF), ``rerank`` (re-ranking IVF-PQ), ``ef_search`` (HNSW)."""
        return dict(self.manifest.get("index", {}).get("params", {}))

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(
        cls, catalog: Catalog, vectors: np.ndarray, encoder: bytes, config: IndexConfig | None = None
    ) -> IndexArtifact:
        """Index N content vectors (N-by-d) of ``catalog`` as ``config`` says (default: auto) and measure recall."""
        config = config or IndexConfig()
        if vectors.ndim != 2 or vectors.shape[0] != len(catalog):
            raise ValueError(f"vectors must be {len(catalog)} rows (one per catalog item) by d, got {vectors.shape}")
        started = time.perf_counter()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index, info = build_index(vectors, config)
        version, built_at = _new_version(vectors.tobytes() + "\0".join(catalog.item_ids.tolist()).encode())
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "version": version,
            "dim": int(vectors.shape[1]),
            "metric": config.metric,
            "index_type": info["index_type"],
            "count": len(catalog),
            "removed": 0,
            "build_params": {},
            "index": info,
            "built_at": built_at,
            "build_seconds": round(time.perf_counter() - started, 3),
            f"recall_at_{info['recall']['k']}": info["recall"]["value"],
        }
        items = {
            "item_id": catalog.item_ids,
            "creator_id": catalog.creator_ids,
            "creator_popularity": catalog.creator_popularity,
            "creator_age_days": catalog.creator_age_days,
        }
        return cls(index, vectors, items, encoder, manifest)

    def measure_recall(self, k: int, queries: int = 200, seed: int = 0) -> float:
        """Recall@k of this index (with its search parameters) against exact search over the live items."""
        live = np.flatnonzero(~self.removed)
        if len(live) == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        sample = self.vectors[rng.choice(live, size=min(queries, len(live)), replace=False)]
        exact = faiss.IndexFlat(self.dim, METRICS[self.manifest["metric"]])
        exact.add(self.vectors[live])
        k = min(k, len(live))
        truth = live[exact.search(sample, k)[1]]
        found = np.stack([self.search(q, k).positions for q in sample])
        hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
        return round(hits / truth.size, 4)

    # ----------------------------------------------------------------------------------------------- files

    def save(self, directory: str | Path) -> None:
        """Write the artifact's files into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "index.faiss"))
        # a new file, then renamed over the old: processes that map the old one keep reading it, never a torn one
        staged = directory / ".vectors.npy.tmp"
        with staged.open("wb") as out:
            np.save(out, self.vectors, allow_pickle=False)
        os.replace(staged, directory / "vectors.npy")
        table = pa.table(
            {
                "item_id": pa.array(self.item_ids.tolist(), pa.string()),
                "creator_id": pa.array(self.creator_ids.tolist(), pa.string()),
                "creator_popularity": pa.array(self.creator_popularity, pa.float64()),
                "creator_age_days": pa.array(self.creator_age_days, pa.float64()),
                "removed": pa.array(self.removed, pa.bool_()),
            }
        )
        pq.write_table(table, directory / "items.parquet")
        (directory / "encoder.npz").write_bytes(self.encoder)
        (directory / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        log.info("saved index %s (%d items, d=%d) to %s", self.version, len(self), self.dim, directory)

    def publish(self, root: Path) -> Path:
        """Write this artifact as ``root/<version>/`` and make it the current version; returns its directory."""
        target = root / self.version
        if (target / "manifest.json").is_file():
            raise ArtifactError(f"{target}: version {self.version} is already published")
        staging = root / f".{self.version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.save(staging)
        os.replace(staging, target)
        pointer = root / f".{CURRENT}.tmp"
        pointer.write_text(self.version + "\n")
        os.replace(pointer, root / CURRENT)
        log.info("published index %s under %s", self.version, root)
        return target

    @staticmethod
    def versions(root: Path) -> list[str]:
        """Published versions under ``root``, oldest first (version strings sort by build time)."""
        return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())

    @staticmethod
    def current_version(root: str | Path) -> str:
        """The version ``root/CURRENT`` names."""
        pointer = Path(root) / CURRENT
        try:
            version = pointer.read_text().strip()
        except OSError as exc:
            raise ArtifactError(f"{pointer}: cannot read the current-version pointer ({exc})") from exc
        if not version or "/" in version or version.startswith("."):
            raise ArtifactError(f"{pointer}: {version!r} is not a version name")
        return version

    @classmethod
    def load_version(cls, root: str | Path, version: str | None = None) -> IndexArtifact:
        """Load ``root/<version>/``, or the version ``root/CURRENT`` names when ``version`` is None."""
        root = Path(root)
        version = version or cls.current_version(root)
        directory = root / version
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: no such index version under {root}")
        artifact = cls.load(directory)
        if artifact.version != version:
            raise ArtifactError(f"{directory / 'manifest.json'}: holds version {artifact.version}, not {version}")
        return artifact

    @classmethod
    def load(cls, directory: str | Path) -> IndexArtifact:
        """Load and cross-check an artifact directory (or a versions root with ``CURRENT``).

        Any problem raises ``ArtifactError`` naming the file and the problem.
        """
        directory = Path(directory)
        if not (directory / "manifest.json").exists() and (directory / CURRENT).is_file():
            return cls.load_version(directory)
        for name in FILES:
            if not (directory / name).is_file():
                raise ArtifactError(f"{directory / name}: missing (an index artifact needs {', '.join(FILES)})")
        manifest_path = directory / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
            dim, count, metric = int(manifest["dim"]), int(manifest["count"]), manifest["metric"]
            index_type = manifest.get("index_type", "flat")
            str(manifest["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{manifest_path}: malformed manifest ({exc!r})") from exc
        if manifest.get("format") not in READABLE_FORMATS:
            raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r} is not one of {READABLE_FORMATS}")
        if metric not in METRICS:
            raise ArtifactError(f"{manifest_path}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        known_types = [t for t in INDEX_TYPES if t != "auto"]
        if index_type not in known_types:
            raise ArtifactError(f"{manifest_path}: unknown index_type {index_type!r}; known: {', '.join(known_types)}")
        try:
            index = faiss.read_index(str(directory / "index.faiss"))
        except RuntimeError as exc:
            raise ArtifactError(f"{directory / 'index.faiss'}: unreadable FAISS index ({exc})") from exc
        live = count - int(manifest.get("removed", 0))
        if index.d != dim or not live <= index.ntotal <= count or index.metric_type != METRICS[metric]:
            raise ArtifactError(
                f"{directory / 'index.faiss'}: holds {index.ntotal} vectors of dimension {index.d}, "
                f"manifest says {count} of dimension {dim} ({metric})"
            )
        try:  # mapped read-only: the processes serving one artifact share its pages (the OS page cache)
            vectors = np.asarray(np.load(directory / "vectors.npy", mmap_mode="r", allow_pickle=False))
        except ValueError as exc:
            raise ArtifactError(f"{directory / 'vectors.npy'}: unreadable ({exc})") from exc
        if vectors.shape != (count, dim):
            raise ArtifactError(f"{directory / 'vectors.npy'}: shape {vectors.shape}, manifest says ({count}, {dim})")
        if count:
            float(vectors.reshape(-1)[:: 4096 // vectors.itemsize].sum())  # touch every page now, not on requests
        try:
            table = pq.read_table(directory / "items.parquet")
            items = {
                "item_id": np.array(table.column("item_id").to_pylist(), dtype=object),
                "creator_id": _shared_strings(table.column("creator_id")),
            }
            for c in ("creator_popularity", "creator_age_days"):
                items[c] = table.column(c).to_numpy().astype(np.float64)
            if "removed" in table.column_names:
                items["removed"] = table.column("removed").to_numpy(zero_copy_only=False).astype(bool)
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise ArtifactError(f"{directory / 'items.parquet'}: unreadable id map ({exc})") from exc
        if len(items["item_id"]) != count:
            raise ArtifactError(f"{directory / 'items.parquet'}: {len(items['item_id'])} rows, manifest says {count}")
        return cls(index, vectors, items, (directory / "encoder.npz").read_bytes(), manifest)

    # ------------------------------------------------------------------------------------------- id map

    def has(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the index and not removed."""
        position = self._position.get(item_id)
        return position is not None and not self.removed[position]

    def positions(self, item_ids: list[str]) -> np.ndarray:
        """Positions of known item ids (removed ones included); unknown ids raise ``KeyError`` naming the first."""
        try:
            return np.array([self._position[i] for i in item_ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"unknown item id {exc.args[0]!r}") from None

    def add_items(self, catalog: Catalog, vectors: np.ndarray) -> None:
        """Append new items (ids not in the index) with their N-by-d vectors; existing positions do not change."""
        if vectors.shape != (len(catalog), self.dim):
            raise ValueError(f"vectors must be ({len(catalog)}, {self.dim}), got {vectors.shape}")
        known = [i for i in catalog.item_ids.tolist() if i in self._position]
        if known:
            raise ValueError(f"item id {known[0]!r} is already in the index (remove it first to replace it)")
        if not self._keeps_ids():
            raise ArtifactError(f"index {self.version} (format 1) cannot take new items; rebuild it")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        start = len(self)
        self.index.add_with_ids(vectors, np.arange(start, start + len(catalog), dtype=np.int64))
        self.vectors = np.concatenate([self.vectors, vectors])
        self.item_ids = np.concatenate([self.item_ids, catalog.item_ids])
        self.creator_ids = np.concatenate([self.creator_ids, catalog.creator_ids])
        self.creator_popularity = np.concatenate([self.creator_popularity, catalog.creator_popularity])
        self.creator_age_days = np.concatenate([self.creator_age_days, catalog.creator_age_days])
        self.removed = np.concatenate([self.removed, np.zeros(len(catalog), dtype=bool)])
        self._position.update({item: start + i for i, item in enumerate(catalog.item_ids.tolist())})
        self._changed(f"add:{','.join(catalog.item_ids.tolist())}".encode() + vectors.tobytes())

    def remove_items(self, item_ids: list[str]) -> None:
        """Take items out of retrieval; their positions stay (so logged decisions still resolve) but never match.

        Flat and IVF indexes drop the vectors (``remove_ids``); HNSW cannot, so its removed items are filtered at
        query time.
        """
        positions = self.positions(item_ids)
        positions = positions[~self.removed[positions]]
        if len(positions) == 0:
            return
        if not self._keeps_ids():
            raise ArtifactError(f"index {self.version} (format 1) cannot remove items; rebuild it")
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
        if not isinstance(inner, faiss.IndexHNSW):
            self.index.remove_ids(faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(positions)))
        self.removed[positions] = True
        self._changed(f"remove:{','.join(item_ids)}".encode())

    def _keeps_ids(self) -> bool:
        """Whether the index stores item positions as ids (IVF natively, others through an IndexIDMap)."""
        return isinstance(self.index, faiss.IndexIDMap | faiss.IndexIVF)

    def _changed(self, what: bytes) -> None:
        version, built_at = _new_version(self.version.encode() + what)
        self.manifest |= {
            "version": version,
            "built_at": built_at,
            "count": len(self),
            "removed": int(self.removed.sum()),
            "parent_version": self.version,
        }
        self._catalog_mean = None
        self._live_bits = None
        self._n_removed = None
        self._plain_params = None

    # ------------------------------------------------------------------------------------------- search

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

    def search(
        self,
        query: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
        strategy: str = "selector",
    ) -> SearchResult:
        """Top-k positions for one d-dimensional query.

        Parameters
        ----------
        query
            d floats.
        k
            Results wanted (fewer come back only when fewer items qualify).
        exclude
            Positions never to return (for instance items the user has seen).
        allowed
            If given, only these positions may be returned (for instance items available in the user's region).
        strategy
            ``selector``: FAISS skips disqualified ids inside the search (an ``IDSelector`` in the search
            parameters); ``overfetch``: search for more and filter afterwards, widening until k qualify.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query must have {self.dim} numbers, got {q.shape[1]}")
        exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
        filtered = len(exclude) > 0 or allowed is not None or self._removed_count() > 0
        if not filtered or strategy == "overfetch":
            return self._overfetch(q, k, exclude, allowed)
        selector, keep_alive = self._selector(exclude, allowed)
        params = search_parameters(self.index, self.search_params, selector)
        scores, labels = self._search(q, min(k, len(self)), params)
        del keep_alive
        ok = labels[0] >= 0
        return SearchResult(positions=labels[0, ok].astype(np.int64), scores=scores[0, ok])

    def search_many(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered top-k for Q queries at once: Q-by-k scores and positions (-1 where fewer exist)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self._search(q, min(k, len(self)), self._unfiltered_params())

    def _selector(self, exclude: np.ndarray, allowed: np.ndarray | None) -> tuple[Any, list[Any]]:
        n = len(self)
        if allowed is not None:
            mask = np.zeros(n, dtype=bool)
            mask[np.asarray(allowed, dtype=np.int64)] = True
            mask &= ~self.removed
            mask[exclude] = False
            bits = np.packbits(mask, bitorder="little")
            return faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)), [bits]
        keep: list[Any] = []
        selector: Any = None
        if self._removed_count() > 0:
            if self._live_bits is None:
                self._live_bits = np.packbits(~self.removed, bitorder="little")
            selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(self._live_bits))
            keep.append(self._live_bits)
        if len(exclude):
            ids = np.ascontiguousarray(exclude)
            batch = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
            not_excluded = faiss.IDSelectorNot(batch)
            keep += [ids, batch, not_excluded]
            if selector is not None:
                keep.append(selector)
                selector = faiss.IDSelectorAnd(selector, not_excluded)
            else:
                selector = not_excluded
        return selector, keep

    def _search(self, queries: np.ndarray, k: int, prepared: Any) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search with the prepared parameters, re-ranked from the vectors when the index asks for it."""
        return search(self.index, queries, k, self.search_params, self.vectors, self.manifest["metric"], prepared)

    def _unfiltered_params(self) -> Any:
        """Search parameters without a selector, built once (FAISS only reads them, so threads may share them)."""
        if self._plain_params is None:
            self._plain_params = search_parameters(self.index, self.search_params)
        return self._plain_params

    def _removed_count(self) -> int:
        """How many items are removed (cached: counting a million flags on every query costs more than the search)."""
        if self._n_removed is None:
            self._n_removed = int(self.removed.sum())
        return self._n_removed

    def _overfetch(self, q: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> SearchResult:
        n = len(self)
        removed = self._removed_count()
        live: np.ndarray | None = None  # None: every item but the removed ones (no N-sized mask per query)
        want = k + len(exclude) + removed
        if allowed is not None:
            live = ~self.removed
            allowed_mask = np.zeros(n, dtype=bool)
            allowed_mask[np.asarray(allowed, dtype=np.int64)] = True
            live &= allowed_mask
            want = math.ceil((k + len(exclude)) * n / max(int(live.sum()), 1))
        params = self._unfiltered_params()
        while True:
            want = min(want, n)
            scores, labels = self._search(q, want, params)
            found = labels[0]
            ok = found >= 0
            if live is not None:
                ok[ok] = live[found[ok]]
            elif removed:
                ok[ok] = ~self.removed[found[ok]]
            if len(exclude):
                ok &= ~np.isin(found, exclude)
            keep = np.flatnonzero(ok)[:k]
            if len(keep) >= k or want >= n:
                break
            want *= 2
        return SearchResult(positions=labels[0, keep].astype(np.int64), scores=scores[0, keep])
