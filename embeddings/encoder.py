"""A PyTorch content encoder: text, tags and numeric descriptors in, one unit vector per item out.

Each signal is featurized without any vocabulary to fit (text through a :class:`~embeddings.base.TextEncoder`:
hashed words or MiniLM sentence vectors; hashed tags; standardized descriptors), projected by its own linear layer
and summed; the sum is L2-normalized. A missing signal contributes zero, so every item gets a vector. Weights are a
seeded random projection, which preserves the similarity of the signals (items sharing words, tags or descriptor
values land close together); :mod:`embeddings.tower` trains a tower on co-engagement over the same features.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from embeddings.base import Catalog, TextEncoder
from embeddings.text import TEXT_ENCODERS, bucket, make_text_encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder shape and build settings.

    Parameters
    ----------
    dim
        Output vector dimension d.
    text_buckets, tag_buckets
        Hashing-trick widths for words (hashed text encoder) and tags.
    seed
        Seed of the initial weights.
    batch_size
        Items encoded per batch.
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    text_encoder
        ``hashed`` (fast, for tests and the demo) or ``minilm`` (the all-MiniLM-L6-v2 sentence encoder).
    """

    dim: int = 32
    text_buckets: int = 1024
    tag_buckets: int = 256
    seed: int = 0
    batch_size: int = 4096
    device: str = "auto"
    text_encoder: str = "hashed"

    def __post_init__(self) -> None:
        if min(self.dim, self.text_buckets, self.tag_buckets, self.batch_size) <= 0:
            raise ValueError("dim, text_buckets, tag_buckets and batch_size must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}")


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda`` to a torch device; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def text_encoder_for(config: EncoderConfig) -> TextEncoder:
    """The text encoder ``config`` names, on the configured device."""
    return make_text_encoder(config.text_encoder, config.text_buckets, device=resolve_device(config.device).type)


def descriptor_stats(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of the catalog's descriptors (ignoring NaN; std 1 where constant)."""
    if len(catalog) == 0:
        return np.zeros(catalog.descriptors.shape[1]), np.ones(catalog.descriptors.shape[1])
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(catalog.descriptors, axis=0))
        std = np.nan_to_num(np.nanstd(catalog.descriptors, axis=0), nan=1.0)
    return mean, np.where(std > 0, std, 1.0)


def hash_tags(tags: tuple[tuple[str, ...], ...], buckets: int) -> np.ndarray:
    """Multi-hot hashed tags: one row per item, ``buckets`` columns, L2-normalized (zero without tags)."""
    out = np.zeros((len(tags), buckets), dtype=np.float32)
    for i, names in enumerate(tags):
        for name in names:
            out[i, bucket(name.lower(), buckets)] = 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class ContentEncoder(nn.Module):
    """Sum of per-signal linear projections, L2-normalized.

    Parameters
    ----------
    config
        Shape and seed.
    descriptor_mean, descriptor_std
        M numbers each: the catalog statistics used to standardize descriptors.
    text_dim
        Width of the text features (the text encoder's ``dim``); by default what ``config`` implies.
    """

    def __init__(
        self,
        config: EncoderConfig,
        descriptor_mean: np.ndarray,
        descriptor_std: np.ndarray,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._text_source: TextEncoder | None = None
        generator = torch.Generator().manual_seed(config.seed)
        m = len(descriptor_mean)
        if text_dim is None:
            text_dim = config.text_buckets if config.text_encoder == "hashed" else 384
        self.text = nn.Linear(text_dim, config.dim, bias=False)
        self.tags = nn.Linear(config.tag_buckets, config.dim, bias=False)
        self.descriptors = nn.Linear(max(m, 1), config.dim, bias=False)
        with torch.no_grad():
            for layer in (self.text, self.tags, self.descriptors):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / np.sqrt(config.dim))
        self.register_buffer("descriptor_mean", torch.as_tensor(descriptor_mean, dtype=torch.float32))
        self.register_buffer("descriptor_std", torch.as_tensor(descriptor_std, dtype=torch.float32))

    @property
    def text_source(self) -> TextEncoder:
        """The text encoder (created on first use: MiniLM loads its weights then)."""
        if self._text_source is None:
            self._text_source = text_encoder_for(self.config)
        return self._text_source

    def forward(self, text: torch.Tensor, tags: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Encode a batch: B-by-text_dim, B-by-tag_buckets, B-by-M (NaN = missing) in; B-by-d out."""
        mean, std = self.get_buffer("descriptor_mean"), self.get_buffer("descriptor_std")
        z = (descriptors - mean) / std
        z = torch.nan_to_num(z, nan=0.0)
        if z.shape[1] == 0:
            z = torch.zeros(z.shape[0], 1, device=z.device)
        out = self.text(text) + self.tags(tags) + self.descriptors(z) / np.sqrt(max(z.shape[1], 1))
        return nn.functional.normalize(out, dim=1)

    def featurize(
        self, catalog: Catalog, rows: slice, text: TextEncoder | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features of ``catalog[rows]``: text vectors, hashed tags and raw descriptors (float32, one row per item).

        ``text`` replaces the configured text encoder (a :class:`~embeddings.cache.TextVectorCache` wrapping it).
        """
        source = text if text is not None else self.text_source
        texts = catalog.texts[rows].tolist()
        return (
            source.encode_texts(texts).astype(np.float32, copy=False),
            hash_tags(catalog.tags[rows], self.config.tag_buckets),
            catalog.descriptors[rows].astype(np.float32),
        )

    @torch.no_grad()
    def encode(self, catalog: Catalog, progress: bool = False, text: TextEncoder | None = None) -> np.ndarray:
        """Encode every item: N-by-d float32 unit vectors, on the configured device.

        ``text`` replaces the configured text encoder (for instance a cache wrapping it).
        """
        device = resolve_device(self.config.device)
        self.to(device).eval()
        out = np.empty((len(catalog), self.config.dim), dtype=np.float32)
        starts = range(0, len(catalog), self.config.batch_size)
        for start in tqdm(starts, desc=f"encoding on {device.type}", unit="batch", disable=not progress):
            rows = slice(start, start + self.config.batch_size)
            batch = [torch.from_numpy(a).to(device) for a in self.featurize(catalog, rows, text)]
            out[rows] = self(*batch).float().cpu().numpy()
        log.info("encoded %d items into %d dims on %s", len(catalog), self.config.dim, device)
        return out

    @classmethod
    def for_catalog(cls, catalog: Catalog, config: EncoderConfig) -> ContentEncoder:
        """An encoder whose descriptor statistics come from ``catalog``."""
        mean, std = descriptor_stats(catalog)
        return cls(config, mean, std)

    def to_bytes(self) -> bytes:
        """Weights and configuration as ``np.savez`` bytes (no pickle)."""
        buffer = io.BytesIO()
        state = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        cfg = self.config
        shape = np.array([cfg.dim, cfg.text_buckets, cfg.tag_buckets, cfg.seed, cfg.batch_size])
        np.savez(buffer, __config__=shape, __text_encoder__=np.array(cfg.text_encoder), **state)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> ContentEncoder:
        """Load an encoder written by :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        dim, text_buckets, tag_buckets, seed, batch_size = (int(v) for v in arrays.pop("__config__"))
        text_encoder = str(arrays.pop("__text_encoder__", np.array("hashed")))
        config = EncoderConfig(dim, text_buckets, tag_buckets, seed, batch_size, device, text_encoder)
        encoder = cls(config, arrays["descriptor_mean"], arrays["descriptor_std"], arrays["text.weight"].shape[1])
        encoder.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return encoder
