"""Which creators count as emerging: a rule over catalog facts, recorded with every decision."""

from __future__ import annotations

from collections.abc import Sequence
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


def merge_candidates(
    main_ids: Sequence[str], emerging_ids: Sequence[str], total: int, quota: int
) -> tuple[list[str], list[bool]]:
    """Merge a main retrieval list with an emerging-only list into one candidate list, deterministically.

    The retrieval-side quota: the first ``total - q`` main candidates, then ``q`` emerging-only candidates not
    already taken (in their list's order), where ``q = min(quota, what the emerging list can add)``; any room
    left is filled with further main candidates. The result depends only on the two ordered lists and the two
    numbers, so replay rebuilds the same candidate set from what was logged.

    Parameters
    ----------
    main_ids
        The main search's candidate ids, best first.
    emerging_ids
        A search restricted to emerging creators, best first.
    total
        Number of candidates wanted, positive.
    quota
        Candidates reserved for the emerging-only list, in [0, total].

    Returns
    -------
    tuple[list[str], list[bool]]
        The merged ids, and for each whether it came in through the quota.
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0 <= quota <= total:
        raise ValueError(f"quota must be in [0, total={total}], got {quota}")
    main = list(dict.fromkeys(main_ids))
    head = main[: total - quota]
    taken = set(head)
    extra = [i for i in dict.fromkeys(emerging_ids) if i not in taken][:quota]
    taken.update(extra)
    tail = [i for i in main[total - quota :] if i not in taken][: total - len(head) - len(extra)]
    ids = head + extra + tail
    return ids, [False] * len(head) + [True] * len(extra) + [False] * len(tail)
