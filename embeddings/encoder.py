"""A PyTorch content encoder: text, tags and numeric descriptors in, one unit vector per item out.

Each signal is featurized without any vocabulary to fit (hashed bag of words, hashed tags, standardized
descriptors), projected by its own linear layer and summed; the sum is L2-normalized. A missing signal
contributes zero, so every item gets a vector. Weights start from a seeded random projection, which preserves
the similarity of the signals (items sharing words, tags or descriptor values land close together); training on
co-engagement is future work that keeps this interface.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from embeddings.base import Catalog

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder shape and build settings.

    Parameters
    ----------
    dim
        Output vector dimension d.
    text_buckets, tag_buckets
        Hashing-trick widths for words and tags.
    seed
        Seed of the initial weights.
    batch_size
        Items encoded per batch.
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    dim: int = 32
    text_buckets: int = 1024
    tag_buckets: int = 256
    seed: int = 0
    batch_size: int = 4096
    device: str = "auto"

    def __post_init__(self) -> None:
        if min(self.dim, self.text_buckets, self.tag_buckets, self.batch_size) <= 0:
            raise ValueError("dim, text_buckets, tag_buckets and batch_size must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda`` to a torch device; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def _bucket(token: str, buckets: int) -> int:
    return zlib.crc32(token.encode()) % buckets


class ContentEncoder(nn.Module):
    """Sum of per-signal linear projections, L2-normalized.

    Parameters
    ----------
    config
        Shape and seed.
    descriptor_mean, descriptor_std
        M numbers each: the catalog statistics used to standardize descriptors.
    """

    def __init__(self, config: EncoderConfig, descriptor_mean: np.ndarray, descriptor_std: np.ndarray) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        m = len(descriptor_mean)
        self.text = nn.Linear(config.text_buckets, config.dim, bias=False)
        self.tags = nn.Linear(config.tag_buckets, config.dim, bias=False)
        self.descriptors = nn.Linear(max(m, 1), config.dim, bias=False)
        with torch.no_grad():
            for layer in (self.text, self.tags, self.descriptors):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / np.sqrt(config.dim))
        self.register_buffer("descriptor_mean", torch.as_tensor(descriptor_mean, dtype=torch.float32))
        self.register_buffer("descriptor_std", torch.as_tensor(descriptor_std, dtype=torch.float32))

    def forward(self, text: torch.Tensor, tags: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Encode a batch: B-by-text_buckets, B-by-tag_buckets, B-by-M (NaN = missing) in; B-by-d out."""
        mean, std = self.get_buffer("descriptor_mean"), self.get_buffer("descriptor_std")
        z = (descriptors - mean) / std
        z = torch.nan_to_num(z, nan=0.0)
        if z.shape[1] == 0:
            z = torch.zeros(z.shape[0], 1, device=z.device)
        out = self.text(text) + self.tags(tags) + self.descriptors(z) / np.sqrt(max(z.shape[1], 1))
        return nn.functional.normalize(out, dim=1)

    def featurize(self, catalog: Catalog, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hash the text and tags of ``catalog[rows]``: three float32 arrays, one row per item."""
        texts, tags = catalog.texts[rows], catalog.tags[rows]
        b, cfg = len(texts), self.config
        text = np.zeros((b, cfg.text_buckets), dtype=np.float32)
        tag = np.zeros((b, cfg.tag_buckets), dtype=np.float32)
        for i, (t, g) in enumerate(zip(texts, tags, strict=True)):
            for token in _TOKEN.findall(t.lower()):
                text[i, _bucket(token, cfg.text_buckets)] += 1.0
            for name in g:
                tag[i, _bucket(name.lower(), cfg.tag_buckets)] = 1.0
        for m in (text, tag):
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            np.divide(m, norms, out=m, where=norms > 0)
        return text, tag, catalog.descriptors[rows].astype(np.float32)

    @torch.no_grad()
    def encode(self, catalog: Catalog, progress: bool = False) -> np.ndarray:
        """Encode every item: N-by-d float32 unit vectors, on the configured device."""
        device = resolve_device(self.config.device)
        self.to(device).eval()
        out = np.empty((len(catalog), self.config.dim), dtype=np.float32)
        starts = range(0, len(catalog), self.config.batch_size)
        for start in tqdm(starts, desc=f"encoding on {device.type}", unit="batch", disable=not progress):
            rows = slice(start, start + self.config.batch_size)
            batch = [torch.from_numpy(a).to(device) for a in self.featurize(catalog, rows)]
            out[rows] = self(*batch).float().cpu().numpy()
        log.info("encoded %d items into %d dims on %s", len(catalog), self.config.dim, device)
        return out

    @classmethod
    def for_catalog(cls, catalog: Catalog, config: EncoderConfig) -> ContentEncoder:
        """An encoder whose descriptor statistics come from ``catalog``."""
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(catalog.descriptors, axis=0)) if len(catalog) else np.zeros(0)
            std = np.nan_to_num(np.nanstd(catalog.descriptors, axis=0), nan=1.0) if len(catalog) else np.zeros(0)
        return cls(config, mean, np.where(std > 0, std, 1.0))

    def to_bytes(self) -> bytes:
        """Weights and configuration as ``np.savez`` bytes (no pickle)."""
        buffer = io.BytesIO()
        state = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        cfg = self.config
        shape = np.array([cfg.dim, cfg.text_buckets, cfg.tag_buckets, cfg.seed, cfg.batch_size])
        np.savez(buffer, __config__=shape, **state)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> ContentEncoder:
        """Load an encoder written by :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        dim, text_buckets, tag_buckets, seed, batch_size = (int(v) for v in arrays.pop("__config__"))
        config = EncoderConfig(dim, text_buckets, tag_buckets, seed, batch_size, device)
        encoder = cls(config, arrays["descriptor_mean"], arrays["descriptor_std"])
        encoder.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return encoder
