"""Interface and value types of the embeddings package: the catalog, its content signals, text encoders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Catalog:
    """Items with their creators, catalog facts and content signals; row i of every array is item i.

    Parameters
    ----------
    item_ids, creator_ids
        N strings each; item ids are unique.
    texts
        N strings (title and description); may be empty.
    tags
        N tuples of tag strings; may be empty.
    descriptors
        N-by-M float array of numeric audio/visual descriptors; NaN marks a missing value.
    creator_popularity
        N non-negative floats: the item's creator's popularity (for the emerging-creator rule).
    creator_age_days
        N non-negative floats: days since the creator's first release.
    """

    item_ids: np.ndarray
    creator_ids: np.ndarray
    texts: np.ndarray
    tags: tuple[tuple[str, ...], ...]
    descriptors: np.ndarray
    creator_popularity: np.ndarray
    creator_age_days: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("creator_ids", "texts", "tags", "creator_popularity", "creator_age_days"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, item_ids has {n}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"descriptors must be {n} rows by M columns, got shape {self.descriptors.shape}")
        if len(set(self.item_ids.tolist())) != n:
            raise ValueError("item_ids must be unique")
        if (self.creator_popularity < 0).any() or (self.creator_age_days < 0).any():
            raise ValueError("creator_popularity and creator_age_days must be non-negative")

    def __len__(self) -> int:
        return len(self.item_ids)


class TextEncoder(ABC):
    """Turns strings into fixed-width float32 vectors; the interface every text encoder fills.

    Attributes
    ----------
    name
        A stable identifier of the encoder and its settings (it keys the text-vector cache).
    dim
        Width of the vectors it returns.
    """

    name: str
    dim: int

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode N strings: N-by-``dim`` float32; an empty string gives a zero row (the signal is missing)."""
