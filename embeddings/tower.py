"""A content tower trained on co-engagement, so a brand-new item lands near what its audience likes.

Input: the frozen content-signal features of an item (text vectors from a :class:`~embeddings.base.TextEncoder`,
hashed tags, standardized descriptors with missing-value indicators). Output: a d-dimensional unit vector. A
two-layer MLP is trained with an in-batch contrastive loss (InfoNCE): for a batch of B co-engaged pairs
``(a_i, b_i)`` (two items engaged by the same unit), ``a_i`` should score ``b_i`` above the other B - 1 items of
the batch, and vice versa. Only content goes in, so an item with no interactions at all still gets a vector that
reflects the audiences of items whose content resembles it.

Training is seeded and deterministic on the CPU; on CUDA it runs under bfloat16 autocast. Weights are stored with
``np.savez`` (no pickle).
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from embeddings.base import Catalog, TextEncoder
from embeddings.encoder import descriptor_stats, hash_tags, resolve_device
from embeddings.text import HashedTextEncoder, MiniLMTextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TowerConfig:
    """Shape and training settings of a :class:`ContentTower`.

    Parameters
    ----------
    dim
        Output vector dimension d.
    hidden
        Width of the hidden layer.
    tag_buckets
        Hashing-trick width for tags.
    epochs, batch_size, learning_rate, weight_decay
        Optimization (AdamW); ``batch_size`` pairs per step, so ``2 * batch_size - 2`` in-batch negatives.
    temperature
        Softmax temperature of the InfoNCE loss.
    seed
        Seed of the weights and of the pair order.
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    workers
        DataLoader worker processes (0: load in the training process).
    """

    dim: int = 32
    hidden: int = 256
    tag_buckets: int = 256
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    seed: int = 0
    device: str = "auto"
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "tag_buckets", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (the other pairs of a batch are the negatives)")
        if min(self.learning_rate, self.temperature) <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate and temperature must be positive, weight_decay non-negative")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class TrainingReport:
    """What a training run did: per-epoch mean loss, pairs seen, seconds, device, mixed precision."""

    losses: tuple[float, ...]
    pairs: int
    seconds: float
    device: str
    amp: bool
    extra: dict[str, float] = field(default_factory=dict)


def content_features(
    catalog: Catalog,
    text: TextEncoder,
    tag_buckets: int,
    descriptor_mean: np.ndarray,
    descriptor_std: np.ndarray,
) -> np.ndarray:
    """The frozen features of every item: N-by-(text dim + tag_buckets + 2M) float32.

    Text vectors, hashed tags, standardized descriptors (0 where missing) and one missing-indicator per descriptor.
    """
    text_vectors = text.encode_texts(catalog.texts.tolist()).astype(np.float32)
    tags = hash_tags(catalog.tags, tag_buckets)
    z = (catalog.descriptors - descriptor_mean) / descriptor_std
    missing = np.isnan(z)
    z = np.where(missing, 0.0, np.clip(z, -5.0, 5.0))
    return np.concatenate([text_vectors, tags, z.astype(np.float32), missing.astype(np.float32)], axis=1)


def co_engagement_pairs(
    units: Sequence[str] | np.ndarray, items: np.ndarray, max_pairs_per_unit: int, seed: int
) -> np.ndarray:
    """Pairs of distinct items engaged by the same unit: P-by-2 int64 item positions.

    Parameters
    ----------
    units, items
        One engagement per row: the unit (a user) and the item position it engaged with.
    max_pairs_per_unit
        Pairs sampled (without replacement) per unit, so heavy users do not dominate.
    seed
        Seed of the sampling.
    """
    units = np.asarray(units)
    items = np.asarray(items, dtype=np.int64)
    if len(units) != len(items):
        raise ValueError(f"units has {len(units)} rows, items has {len(items)}")
    if max_pairs_per_unit <= 0:
        raise ValueError(f"max_pairs_per_unit must be positive, got {max_pairs_per_unit}")
    rng = np.random.default_rng(seed)
    order = np.argsort(units, kind="stable")
    units, items = units[order], items[order]
    bounds = np.flatnonzero(np.r_[True, units[1:] != units[:-1], True])
    out: list[np.ndarray] = []
    for start, stop in itertools.pairwise(bounds):
        engaged = np.unique(items[start:stop])
        m = len(engaged)
        if m < 2:
            continue
        total = m * (m - 1) // 2
        take = min(max_pairs_per_unit, total)
        if total <= 100_000:
            upper = np.triu_indices(m, 1)
            pick = rng.choice(total, size=take, replace=False)
            i, j = upper[0][pick], upper[1][pick]
        else:  # a very heavy unit: sample pairs with replacement instead of listing them all
            i = rng.integers(m, size=take)
            j = (i + rng.integers(1, m, size=take)) % m
        out.append(np.stack([engaged[i], engaged[j]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


class ContentTower(nn.Module):
    """Two-layer MLP from frozen content features to a d-dimensional unit vector.

    Parameters
    ----------
    in_dim
        Width of the features (:func:`content_features`).
    config
        Shape and training settings.
    descriptor_mean, descriptor_std
        The descriptor statistics the features were standardized with (stored with the weights).
    text_encoder
        Name of the text encoder the features came from (stored with the weights).
    """

    def __init__(
        self,
        in_dim: int,
        config: TowerConfig,
        descriptor_mean: np.ndarray,
        descriptor_std: np.ndarray,
        text_encoder: str,
    ) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.descriptor_mean = np.asarray(descriptor_mean, dtype=np.float64)
        self.descriptor_std = np.asarray(descriptor_std, dtype=np.float64)
        generator = torch.Generator().manual_seed(config.seed)
        self.net = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.dim))
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                assert isinstance(layer, nn.Linear)
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.zero_()

    @property
    def in_dim(self) -> int:
        """Width of the input features."""
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        return int(first.in_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B-by-in_dim features in, B-by-d unit vectors out."""
        return nn.functional.normalize(self.net(features).float(), dim=1)

    @classmethod
    def for_catalog(cls, catalog: Catalog, config: TowerConfig, text: TextEncoder) -> tuple[ContentTower, np.ndarray]:
        """An untrained tower sized for ``catalog`` and the catalog's features (N-by-in_dim)."""
        mean, std = descriptor_stats(catalog)
        features = content_features(catalog, text, config.tag_buckets, mean, std)
        name = getattr(text, "encoder", text).name
        return cls(features.shape[1], config, mean, std, name), features

    def features(self, catalog: Catalog, text: TextEncoder) -> np.ndarray:
        """Features of ``catalog`` with this tower's descriptor statistics (for new items)."""
        return content_features(catalog, text, self.config.tag_buckets, self.descriptor_mean, self.descriptor_std)

    def fit(self, features: np.ndarray, pairs: np.ndarray, progress: bool = False) -> TrainingReport:
        """Train on co-engaged ``pairs`` (P-by-2 positions into ``features``) with in-batch InfoNCE."""
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"features must be N-by-{self.in_dim}, got {features.shape}")
        if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
            raise ValueError(f"pairs must be P-by-2 item positions with P > 0, got {pairs.shape}")
        if pairs.min() < 0 or pairs.max() >= len(features):
            raise ValueError(f"pairs hold positions outside 0..{len(features) - 1}")
        cfg = self.config
        device = resolve_device(cfg.device)
        amp = device.type == "cuda"
        torch.manual_seed(cfg.seed)
        self.to(device).train()
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
        loader = DataLoader(
            TensorDataset(torch.from_numpy(np.asarray(pairs, dtype=np.int64))),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=len(pairs) > cfg.batch_size,
            num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        losses: list[float] = []
        started = time.perf_counter()
        for epoch in range(cfg.epochs):
            total, batches = 0.0, 0
            bar = tqdm(loader, desc=f"tower epoch {epoch + 1}/{cfg.epochs} on {device.type}", disable=not progress)
            for (batch,) in bar:
                batch = batch.to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    a, b = self(x[batch[:, 0]]), self(x[batch[:, 1]])
                    logits = (a @ b.T).float() / cfg.temperature
                    target = torch.arange(len(batch), device=device)
                    loss = (
                        nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
                    ) / 2
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            losses.append(round(total / max(batches, 1), 5))
            log.info("tower epoch %d: loss %.4f", epoch + 1, losses[-1])
        self.eval()
        return TrainingReport(tuple(losses), len(pairs), round(time.perf_counter() - started, 3), device.type, amp)

    @torch.no_grad()
    def encode_features(self, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """N-by-in_dim features to N-by-d float32 unit vectors (on the configured device)."""
        device = resolve_device(self.config.device)
        self.to(device).eval()
        out = np.empty((len(features), self.config.dim), dtype=np.float32)
        for start in range(0, len(features), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size], dtype=np.float32))
            out[start : start + batch_size] = self(chunk.to(device)).cpu().numpy()
        return out

    def to_bytes(self) -> bytes:
        """Weights, configuration and descriptor statistics as ``np.savez`` bytes (no pickle)."""
        buffer = io.BytesIO()
        cfg = self.config
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        np.savez(
            buffer,
            __kind__=np.array("content_tower"),
            __shape__=np.array([self.in_dim, cfg.dim, cfg.hidden, cfg.tag_buckets, cfg.seed]),
            __text_encoder__=np.array(self.text_encoder),
            descriptor_mean=self.descriptor_mean,
            descriptor_std=self.descriptor_std,
            **state,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "auto") -> ContentTower:
        """Load a tower written by :meth:`to_bytes`; anything else raises ``ValueError`` saying what it is."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if str(arrays.get("__kind__", "")) != "content_tower":
            raise ValueError(f"not a content tower (kind {str(arrays.get('__kind__', 'missing'))!r})")
        in_dim, dim, hidden, tag_buckets, seed = (int(v) for v in arrays["__shape__"])
        config = TowerConfig(dim=dim, hidden=hidden, tag_buckets=tag_buckets, seed=seed, device=device)
        tower = cls(
            in_dim, config, arrays["descriptor_mean"], arrays["descriptor_std"], str(arrays["__text_encoder__"])
        )
        tower.net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("net.")})
        return tower


def tower_text_encoder(name: str, device: str = "cpu") -> TextEncoder:
    """The text encoder a saved tower was trained with (its recorded name: ``hashed-<buckets>`` or MiniLM)."""
    if name.startswith("hashed-") and name[len("hashed-") :].isdigit():
        return HashedTextEncoder(int(name[len("hashed-") :]))
    if name.startswith("minilm"):
        return MiniLMTextEncoder(device=device)
    raise ValueError(f"unknown text encoder {name!r} recorded in the tower")
