"""An on-disk cache of text vectors keyed by the SHA-256 of the text, so a rebuild re-encodes only changed items.

One file per encoder, ``<directory>/<encoder name>.npz``, holds ``keys`` (K 32-byte digests) and ``vectors``
(K-by-dim float32), read without pickle. It is written to a temporary name and renamed, so a crash never leaves a
half-written cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embeddings.base import TextEncoder

log = logging.getLogger(__name__)


class CacheError(ValueError):
    """A cache file is unreadable or inconsistent; the message names the file and the problem."""


def text_key(text: str) -> bytes:
    """The 32-byte SHA-256 digest of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).digest()


class TextVectorCache(TextEncoder):
    """Encode texts through ``encoder``, reusing vectors already computed for the same text.

    Parameters
    ----------
    directory
        Cache root; the encoder's file is ``directory / f"{encoder.name}.npz"``.
    encoder
        The text encoder whose vectors are cached.
    """

    def __init__(self, directory: Path, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        self.path = directory / f"{encoder.name}.npz"
        self.hits = 0
        self.misses = 0
        self._index: dict[bytes, int] = {}
        self._keys: list[bytes] = []
        self._vectors: list[np.ndarray] = []
        self._dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    keys, vectors = npz["keys"], npz["vectors"]
            except (ValueError, KeyError, OSError) as exc:
                raise CacheError(f"{self.path}: unreadable text cache ({exc})") from exc
            if keys.dtype != np.dtype("S32") or vectors.shape != (len(keys), encoder.dim):
                raise CacheError(
                    f"{self.path}: vectors of shape {vectors.shape} for {len(keys)} keys of {keys.dtype}, "
                    f"expected ({len(keys)}, {encoder.dim}) for encoder {encoder.name}"
                )
            self._keys = [bytes(k) for k in keys]
            self._index = {k: i for i, k in enumerate(self._keys)}
            self._vectors = [vectors.astype(np.float32)]
        self._matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def _all(self) -> np.ndarray:
        if self._matrix is None or len(self._matrix) != len(self._keys):
            self._matrix = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.encoder.dim))
            self._vectors = [self._matrix]
        return self._matrix

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode N strings: cached rows for texts seen before, the encoder for the rest (then cached)."""
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._index and key not in missing:
                missing[key] = text
        if missing:
            fresh = self.encoder.encode_texts(list(missing.values()))
            for key in missing:
                self._index[key] = len(self._keys)
                self._keys.append(key)
            self._vectors.append(fresh.astype(np.float32))
            self._dirty = True
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        matrix = self._all()
        return matrix[[self._index[k] for k in keys]] if keys else np.zeros((0, self.encoder.dim), np.float32)

    def save(self) -> None:
        """Write new entries to disk (atomically); a no-op when nothing changed."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.stem}.tmp.npz")
        np.savez(tmp, keys=np.array(self._keys, dtype="S32"), vectors=self._all())
        os.replace(tmp, self.path)
        self._dirty = False
        log.info("text cache %s: %d entries (%d hits, %d misses)", self.path, len(self), self.hits, self.misses)
