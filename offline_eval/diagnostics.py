"""Can an estimate be trusted? Weight summaries per slot, support and explicit warnings.

:class:`WeightSummary` holds sums only (and a log-spaced histogram of whole-slate weights for quantiles, 1%
relative resolution), so it streams and merges like the estimators' statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline_eval.base import SlateData

#: A slot whose effective sample size is under this share of the decisions serving it gets a warning.
MIN_ESS_SHARE = 0.1
_EDGES = np.logspace(-6, 6, 1201)


@dataclass(frozen=True)
class Diagnostics:
    """Importance-weight diagnostics of one target policy on one log.

    Parameters
    ----------
    n
        Decisions.
    effective_sample_size
        The smallest per-slot effective sample size (the binding one).
    ess_per_slot
        ``(sum_i W_ik)^2 / sum_i W_ik^2`` over the decisions that served slot k, for each slot.
    served_per_slot
        Decisions that served each slot.
    max_weight
        Largest prefix weight on any slot.
    weight_quantiles
        The 50%, 90%, 99% quantiles (from a histogram, 1% relative resolution) and the maximum of the whole-slate
        weights.
    mean_weight_per_slot
        Mean prefix weight of each slot over the decisions that served it (one in expectation when the logger
        supports the target).
    unsupported_share
        Share of served slots whose logged item the target never takes there (target probability 0).
    support_deficiency
        Per slot, ``max(0, 1 - mean weight)``: an estimate of the target's probability mass on items the logging
        policy never chose, which no importance-weighted estimator can see.
    deterministic_share
        Share of decisions logged with propensity 1.0 in every slot (no exploration to learn from).
    warnings
        Plain-language reasons not to trust the estimate.
    """

    n: int
    effective_sample_size: float
    ess_per_slot: tuple[float, ...]
    served_per_slot: tuple[int, ...]
    max_weight: float
    weight_quantiles: tuple[float, ...]
    mean_weight_per_slot: tuple[float, ...]
    unsupported_share: float
    support_deficiency: tuple[float, ...]
    deterministic_share: float
    warnings: tuple[str, ...]


class WeightSummary:
    """Mergeable sums behind :class:`Diagnostics`.

    Parameters
    ----------
    slots
        S, the number of slots.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.n = 0
        self.served = np.zeros(slots)
        self.sums = np.zeros(slots)
        self.squares = np.zeros(slots)
        self.max_weight = 0.0
        self.unsupported = 0.0
        self.deterministic = 0.0
        self.histogram = np.zeros(len(_EDGES) + 1)

    def add(self, data: SlateData) -> None:
        """Add a chunk of decisions."""
        if data.slots != self.slots:
            raise ValueError(f"data has {data.slots} slots, the summary {self.slots}")
        weights = data.prefix_weights()
        self.n += data.n
        self.served += data.mask.sum(axis=0)
        self.sums += weights.sum(axis=0)
        self.squares += (weights**2).sum(axis=0)
        self.max_weight = max(self.max_weight, float(weights.max()) if weights.size else 0.0)
        self.unsupported += float((data.target_propensity[data.mask] == 0).sum())
        self.deterministic += float(np.all((data.logged_propensity == 1.0) | ~data.mask, axis=1).sum())
        self.histogram += np.bincount(_bin(data.slate_weights()), minlength=len(_EDGES) + 1)

    def merge(self, other: WeightSummary) -> WeightSummary:
        """Add ``other`` into this one and return it."""
        for name in ("n", "served", "sums", "squares", "unsupported", "deterministic", "histogram"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_weight = max(self.max_weight, other.max_weight)
        return self

    def diagnostics(self) -> Diagnostics:
        """The diagnostics and their warnings."""
        served, sums, squares = self.served, self.sums, self.squares
        ess = np.where(squares > 0, sums**2 / np.where(squares > 0, squares, 1.0), 0.0)
        mean_weight = np.where(served > 0, sums / np.maximum(served, 1), 0.0)
        deficiency = np.clip(1.0 - mean_weight, 0.0, 1.0) * (served > 0)
        deterministic = self.deterministic / self.n if self.n else 0.0
        unsupported = self.unsupported / served.sum() if served.sum() else 0.0
        warnings = []
        if deterministic > 0:
            warnings.append(
                f"{deterministic:.0%} of decisions were logged by a deterministic policy (propensity 1.0 in every "
                "slot): the target has no support there unless it makes the same choices; evaluate on exploratory logs"
            )
        for k in range(self.slots):
            if served[k] and ess[k] < MIN_ESS_SHARE * served[k]:
                warnings.append(
                    f"slot {k}: effective sample size {ess[k]:.0f} is under {MIN_ESS_SHARE:.0%} of the "
                    f"{served[k]:.0f} decisions that served it: expect wide intervals, and normal intervals that "
                    "undercover"
                )
        if self.max_weight > 100:
            warnings.append(f"largest importance weight is {self.max_weight:.0f}: IPS is dominated by a few decisions")
        # Warn only where the deficiency is large and clearly beyond the mean weight's sampling noise.
        spread = np.sqrt(np.maximum(squares / np.maximum(served, 1) - mean_weight**2, 0.0) / np.maximum(served, 1))
        clear = np.where(deficiency > np.maximum(0.05, 3.0 * spread), deficiency, 0.0)
        worst = float(clear.max()) if clear.size else 0.0
        if worst > 0 and self.n >= 100:
            slot = int(np.argmax(clear))
            warnings.append(
                f"slot {slot}: the target puts about {worst:.0%} of its probability on items the logging policy "
                "never chose there (support deficiency): importance-weighted estimates miss that part of its value"
            )
        return Diagnostics(
            n=self.n,
            effective_sample_size=float(ess.min()) if ess.size else 0.0,
            ess_per_slot=tuple(float(x) for x in ess),
            served_per_slot=tuple(int(x) for x in served),
            max_weight=self.max_weight,
            weight_quantiles=(*self._quantiles([0.5, 0.9, 0.99]), self.max_weight),
            mean_weight_per_slot=tuple(float(x) for x in mean_weight),
            unsupported_share=float(unsupported),
            support_deficiency=tuple(float(x) for x in deficiency),
            deterministic_share=float(deterministic),
            warnings=tuple(warnings),
        )

    def _quantiles(self, levels: list[float]) -> list[float]:
        total = self.histogram.sum()
        if not total:
            return [0.0] * len(levels)
        cdf = np.cumsum(self.histogram) / total
        out = []
        for q in levels:
            b = int(np.searchsorted(cdf, q))
            out.append(0.0 if b == 0 else float(_EDGES[min(b, len(_EDGES) - 1)]))
        return out


def _bin(weights: np.ndarray) -> np.ndarray:
    """Histogram bin of each weight: 0 for w <= 1e-6, b for ``_EDGES[b-1] < w <= _EDGES[b]`` (log-spaced, 1%)."""
    with np.errstate(divide="ignore"):
        position = np.ceil((np.log10(np.maximum(weights, 1e-300)) + 6.0) * 100.0 - 1e-9)
    return np.clip(position, 0, len(_EDGES)).astype(np.int64)


def diagnose(data: SlateData) -> Diagnostics:
    """Summarize the weights of ``data`` slot by slot and list warnings."""
    summary = WeightSummary(data.slots)
    summary.add(data)
    return summary.diagnostics()
