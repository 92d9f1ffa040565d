"""One mergeable accumulator for a whole evaluation: every estimator's statistics and the weight diagnostics.

The in-memory path, the streaming reader and the Beam ``CombineFn`` all build a :class:`Summary` chunk by chunk
and read the same :class:`~offline_eval.evaluation.Evaluation` out of it, so they agree to rounding. The
estimators' terms are stacked side by side into one :class:`~offline_eval.statistics.Statistics`, so the Poisson
bootstrap draws one set of counts per chunk and every estimator's replicates use the same resamples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from offline_eval.base import Estimate, Estimator, RewardPredictions, SlateData, Terms
from offline_eval.diagnostics import Diagnostics, WeightSummary
from offline_eval.statistics import Statistics, range_flags

#: The flag of an interval of zero width.
ZERO_WIDTH = (
    "the interval has zero width, so it shows no uncertainty: most often every decision it weighs contributed the "
    "same (for instance, not one nonzero reward), and a rare reward can go unseen in a small effective sample"
)
#: An interval narrower than this share of its estimate (float32 bootstrap sums round to ~1e-7) has zero width.
ZERO_WIDTH_TOLERANCE = 1e-6


def interval_flags(estimate: Estimate) -> list[str]:
    """Flags of an interval that is not finite or has zero width (relative to the estimate)."""
    if not (math.isfinite(estimate.lower) and math.isfinite(estimate.upper)):
        return ["the interval is not finite (too few decisions to estimate its width)"]
    if estimate.upper - estimate.lower <= ZERO_WIDTH_TOLERANCE * abs(estimate.value):
        return [ZERO_WIDTH]
    return []


@dataclass(frozen=True)
class Evaluation:
    """Estimates of one target policy's expected slate reward, with diagnostics."""

    estimates: tuple[Estimate, ...]
    diagnostics: Diagnostics

    def to_dict(self) -> dict[str, Any]:
        """Estimates and diagnostics as strict-JSON values (non-finite numbers as None)."""
        return finite_json({"estimates": [asdict(e) for e in self.estimates], "diagnostics": asdict(self.diagnostics)})


def finite_json(value: Any) -> Any:
    """``value`` with non-finite floats as None, so that strict JSON parsers read it (json.dumps writes NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class Summary:
    """Sums of every estimator's terms and of the weight diagnostics over the chunks added so far.

    Parameters
    ----------
    estimators
        The estimators, in report order.
    slots
        S, the number of slots every chunk is padded to.
    bootstrap
        Poisson bootstrap replicates (0: normal intervals).
    seed
        Seed of the bootstrap counts.
    reward_range
        Bounds of one slot's reward; the observed range when None.
    """

    def __init__(
        self,
        estimators: tuple[Estimator, ...],
        slots: int,
        bootstrap: int = 0,
        seed: int = 0,
        reward_range: tuple[float, float] | None = None,
    ) -> None:
        if not estimators:
            raise ValueError("estimators must name at least one estimator")
        self.estimators = estimators
        self.slots = slots
        self.bootstrap, self.seed = bootstrap, seed
        self.reward_range = reward_range
        self.weights = WeightSummary(slots)
        self.stats: Statistics | None = None
        self.widths: list[int] = []
        self.total_length = 0.0
        self.low, self.high = np.inf, -np.inf

    def add(self, data: SlateData, predictions: RewardPredictions | None, key: int) -> None:
        """Add a chunk of decisions (``key``, unique per chunk, seeds its bootstrap counts)."""
        if data.slots != self.slots:
            raise ValueError(f"chunk has {data.slots} slots, the summary {self.slots}")
        parts = [e.terms(data, predictions) for e in self.estimators]
        widths = [p.num.shape[1] for p in parts]
        if self.stats is None:
            self.stats = Statistics(sum(widths), self.bootstrap, self.seed)
            self.widths = widths
        elif widths != self.widths:
            raise ValueError(f"estimators' term widths changed between chunks: {self.widths} then {widths}")
        self.stats.add(Terms(np.hstack([p.num for p in parts]), np.hstack([p.den for p in parts])), key)
        self.weights.add(data)
        self.total_length += float(data.lengths().sum())
        if data.mask.any():
            served = data.reward[data.mask]
            self.low, self.high = min(self.low, float(served.min())), max(self.high, float(served.max()))

    def merge(self, other: Summary) -> Summary:
        """Add ``other`` (built with the same estimators and settings) into this one and return it."""
        if other.stats is not None:
            if self.stats is None:
                self.stats, self.widths = other.stats, other.widths
            else:
                self.stats.merge(other.stats)
        self.weights.merge(other.weights)
        self.total_length += other.total_length
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        return self

    def bounds(self) -> tuple[float, float]:
        """The range of expected total reward that the reward range allows on these requests."""
        n = self.weights.n
        if not n:
            return (0.0, 0.0)
        low, high = self.reward_range if self.reward_range is not None else (self.low, self.high)
        mean_length = self.total_length / n
        return low * mean_length, high * mean_length

    def evaluation(self, level: float = 0.95) -> Evaluation:
        """Every estimator's estimate, flagged where it cannot be trusted, and the diagnostics."""
        if self.stats is None or self.stats.n == 0:
            raise ValueError("no decisions to evaluate")
        diagnostics = self.weights.diagnostics()
        bounds = self.bounds()
        estimates = []
        start = 0
        for estimator, width in zip(self.estimators, self.widths, strict=True):
            estimate = self.stats.block(start, start + width).estimate(estimator.name, bounds, level)
            start += width
            flags = list(range_flags(estimate.value, bounds))
            if diagnostics.deterministic_share > 0.5 or diagnostics.effective_sample_size < 10:
                flags.append("too little exploration in the logs to trust this estimate")
            flags += interval_flags(estimate)
            estimates.append(replace(estimate, flags=tuple(flags)))
        return Evaluation(tuple(estimates), diagnostics)
