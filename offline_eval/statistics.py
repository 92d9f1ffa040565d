"""Mergeable sufficient statistics of an estimator's terms: point estimate, normal interval, Poisson bootstrap.

An estimate is ``V = sum_j mean(num_j) / mean(den_j)`` over J components. :class:`Statistics` keeps

- the sums of ``num`` and ``den`` (the point estimate),
- their cross moments (J-by-J) for the delta-method standard error, and
- for B bootstrap replicates, the sums of ``c_bi * num_i`` and ``c_bi * den_i`` with Poisson(1) counts ``c_bi``.

Everything is a sum, so chunks of decisions are added in any order and partial statistics merge by addition
(the Beam ``CombineFn`` does exactly that). Memory is O(B * J + J^2) plus one chunk, whatever the number of
decisions. Poisson(1) counts replace the multinomial of the classic bootstrap (Hanley and MacGibbon 2006;
"Poisson bootstrap"): each decision appears ``c ~ Poisson(1)`` times in a replicate, independently, so no
replicate needs to see the whole data set. The counts come from one random byte each (Poisson(1) at 1/256
resolution) and multiply the terms in float32 per chunk of 16,384 decisions, accumulated in float64: the
replicates' relative rounding is about 1e-6, far below their spread. Counts are drawn per chunk from
``numpy.random.default_rng([seed, key])``, where ``key`` names the chunk, so the same chunks give the same
replicates on any runner.

The **normal interval** is ``V +- z * se`` with the delta-method (influence-function) standard error of a sum of
ratios of means. It assumes the decisions are independent draws from one distribution and that n is large enough
for the central limit theorem to hold for the weighted terms: with heavy-tailed importance weights (a small
effective sample size) it is too narrow, which is what the diagnostics warn about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from offline_eval.base import Estimate, Terms, ratio_sum

#: Decisions per chunk when the bootstrap draws its counts (B-by-chunk counts live at once).
BOOTSTRAP_CHUNK = 16384


def _poisson_thresholds(levels: int = 256) -> np.ndarray:
    """Byte thresholds ``t_k``: a uniform byte ``u`` gives the count ``#{k : u >= t_k}`` ~ Poisson(1)."""
    k = np.arange(1, 8)
    cdf = np.cumsum(np.exp(-1.0) / np.array([math.factorial(int(i)) for i in range(8)]))
    return np.minimum(np.round(cdf[k - 1] * levels), levels).astype(np.int64)


_THRESHOLDS = [int(t) for t in _poisson_thresholds() if t < 256]


def poisson_counts(rng: np.random.Generator, replicates: int, rows: int) -> np.ndarray:
    """B-by-m counts ~ Poisson(1) at 1/256 resolution of probability, as float32.

    One random byte per count (raw generator output), compared with the byte-quantized CDF; the counts' mean is
    within 0.5% of one, which the estimates (ratios of count-weighted sums) do not see.
    """
    size = replicates * rows
    raw = rng.bit_generator.random_raw((size + 7) // 8)
    u = np.asarray(raw, dtype=np.uint64).view(np.uint8)[:size].reshape(replicates, rows)
    counts = np.greater_equal(u, _THRESHOLDS[0]).view(np.uint8)
    above = np.empty(u.shape, dtype=bool)
    for t in _THRESHOLDS[1:]:
        np.greater_equal(u, t, out=above)
        counts += above.view(np.uint8)
    return counts.astype(np.float32)


@dataclass
class Statistics:
    """Running sums of an estimator's terms; see the module docstring.

    Parameters
    ----------
    components
        J, the number of term components.
    bootstrap
        B, the number of Poisson bootstrap replicates (0 for none).
    seed
        Seed of the bootstrap counts.
    """

    components: int
    bootstrap: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        j, b = self.components, self.bootstrap
        if j < 1 or b < 0:
            raise ValueError(f"need components >= 1 and bootstrap >= 0, got {j} and {b}")
        self.n = 0
        self.sum_num, self.sum_den = np.zeros(j), np.zeros(j)
        self.num_num, self.num_den, self.den_den = np.zeros((j, j)), np.zeros((j, j)), np.zeros((j, j))
        self.boot_num, self.boot_den = np.zeros((b, j)), np.zeros((b, j))

    def add(self, terms: Terms, key: int = 0) -> None:
        """Add the terms of a chunk of decisions; ``key`` (unique per chunk) seeds its bootstrap counts."""
        num, den = terms.num, terms.den
        if num.shape[1] != self.components:
            raise ValueError(f"terms have {num.shape[1]} components, statistics expect {self.components}")
        self.n += num.shape[0]
        self.sum_num += num.sum(axis=0)
        self.sum_den += den.sum(axis=0)
        self.num_num += num.T @ num
        self.num_den += num.T @ den
        self.den_den += den.T @ den
        if self.bootstrap:
            rng = np.random.default_rng([self.seed, key])
            both = np.hstack([num, den]).astype(np.float32)
            j = self.components
            for start in range(0, num.shape[0], BOOTSTRAP_CHUNK):
                stop = min(start + BOOTSTRAP_CHUNK, num.shape[0])
                sums = (poisson_counts(rng, self.bootstrap, stop - start) @ both[start:stop]).astype(np.float64)
                self.boot_num += sums[:, :j]
                self.boot_den += sums[:, j:]

    def merge(self, other: Statistics) -> Statistics:
        """Add ``other`` (same components, replicates and seed) into this one and return it."""
        if (other.components, other.bootstrap, other.seed) != (self.components, self.bootstrap, self.seed):
            raise ValueError("statistics of different shapes or seeds cannot be merged")
        self.n += other.n
        for name in ("sum_num", "sum_den", "num_num", "num_den", "den_den", "boot_num", "boot_den"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def block(self, start: int, stop: int) -> Statistics:
        """The statistics of components ``start..stop-1`` alone (an estimator's share of stacked terms)."""
        out = Statistics(stop - start, self.bootstrap, self.seed)
        out.n = self.n
        sl = slice(start, stop)
        out.sum_num, out.sum_den = self.sum_num[sl].copy(), self.sum_den[sl].copy()
        out.num_num, out.num_den, out.den_den = (m[sl, sl].copy() for m in (self.num_num, self.num_den, self.den_den))
        out.boot_num, out.boot_den = self.boot_num[:, sl].copy(), self.boot_den[:, sl].copy()
        return out

    def value(self) -> float:
        """The point estimate."""
        return float(ratio_sum(self.sum_num, self.sum_den))

    def std_error(self) -> float:
        """Delta-method standard error of the estimate."""
        if self.n < 2:
            return float("nan")
        n = self.n
        live = self.sum_den != 0
        mean_den = np.where(live, self.sum_den / n, 1.0)
        ratio = np.where(live, self.sum_num / np.where(live, self.sum_den, 1.0), 0.0)
        a = np.where(live, 1.0 / mean_den, 0.0)
        b = -ratio * a
        second = a @ self.num_num @ a + 2.0 * a @ self.num_den @ b + b @ self.den_den @ b
        variance = max(float(second) / n, 0.0) / (n - 1)
        return math.sqrt(variance)

    def replicates(self) -> np.ndarray:
        """B bootstrap values of the estimate."""
        return np.asarray(ratio_sum(self.boot_num, self.boot_den))

    def estimate(self, name: str, bounds: tuple[float, float], level: float = 0.95) -> Estimate:
        """The estimate with a bootstrap interval if replicates were drawn, else the normal interval."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        value, se = self.value(), self.std_error()
        if self.bootstrap:
            alpha = (1.0 - level) / 2.0
            lower, upper = (float(x) for x in np.quantile(self.replicates(), [alpha, 1.0 - alpha]))
            method = f"bootstrap({self.bootstrap})"
        else:
            z = _normal_quantile(0.5 + level / 2.0)
            lower, upper, method = value - z * se, value + z * se, "normal"
        return Estimate(name, value, lower, upper, level, self.n, method, se, range_flags(value, bounds))


def estimate_from_terms(
    name: str,
    terms: Terms,
    bounds: tuple[float, float],
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 1 << 18,
) -> Estimate:
    """Accumulate ``terms`` chunk by chunk (chunk i has key i) and return the estimate."""
    stats = Statistics(terms.num.shape[1], bootstrap, seed)
    for key, start in enumerate(range(0, terms.num.shape[0], chunk)):
        stats.add(Terms(terms.num[start : start + chunk], terms.den[start : start + chunk]), key)
    return stats.estimate(name, bounds, level)


def range_flags(value: float, bounds: tuple[float, float]) -> tuple[str, ...]:
    """A flag when ``value`` is outside ``bounds`` (what the reward range allows), else nothing."""
    low, high = bounds
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    if not math.isfinite(value):
        return ("the estimate is not finite",)
    if value < low - slack or value > high + slack:
        return (f"estimate {value:.4g} is outside [{low:.4g}, {high:.4g}], the range the rewards allow",)
    return ()


def _normal_quantile(p: float) -> float:
    """Standard normal quantile."""
    return NormalDist().inv_cdf(p)
