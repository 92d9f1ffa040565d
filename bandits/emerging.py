"""Which creators count as emerging: a rule over catalog facts, recorded with every decision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EmergingRule:
    """A creator is emerging when below a popularity quantile, or when its first release is recent.

    Emerging means: popularity below the ``popularity_quantile`` of all creators, or a first release at most
    ``max_age_days`` old.

    Parameters
    ----------
    popularity_quantile
        Quantile in [0, 1] of the creators' popularity; 0 turns the popularity criterion off.
    max_age_days
        Days since first release; 0 turns the age criterion off.
    popularity_threshold
        The popularity at that quantile, resolved against a catalog by :meth:`resolve` (None until then).
    """

    popularity_quantile: float = 0.2
    max_age_days: float = 90.0
    popularity_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.popularity_quantile <= 1.0:
            raise ValueError(f"popularity_quantile must be in [0, 1], got {self.popularity_quantile}")
        if self.max_age_days < 0:
            raise ValueError(f"max_age_days must be non-negative, got {self.max_age_days}")

    def resolve(self, creator_ids: np.ndarray, creator_popularity: np.ndarray) -> EmergingRule:
        """Fix the popularity threshold from per-item creator ids and popularity (one value per creator)."""
        _, first = np.unique(creator_ids.astype(str), return_index=True)
        per_creator = creator_popularity[first]
        threshold = float(np.quantile(per_creator, self.popularity_quantile)) if len(per_creator) else 0.0
        return EmergingRule(self.popularity_quantile, self.max_age_days, threshold)

    def flags(self, creator_popularity: np.ndarray, creator_age_days: np.ndarray) -> np.ndarray:
        """Emerging flag per item, from its creator's popularity and age (the rule must be resolved)."""
        if self.popularity_threshold is None:
            raise ValueError("resolve the rule against a catalog before computing flags")
        by_popularity = (self.popularity_quantile > 0) & (creator_popularity < self.popularity_threshold)
        by_age = (self.max_age_days > 0) & (creator_age_days <= self.max_age_days)
        return np.asarray(by_popularity | by_age, dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        """The rule's parameters, as logged with each decision."""
        return asdict(self)
