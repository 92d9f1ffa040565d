"""Can an estimate be trusted? Weight summaries, support and explicit warnings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline_eval.base import SlateData


@dataclass(frozen=True)
class Diagnostics:
    """Importance-weight diagnostics of one target policy on one log.

    Parameters
    ----------
    n
        Decisions.
    effective_sample_size
        ``(sum w)^2 / sum w^2`` of the first slot's weights (the largest of the slots).
    max_weight
        Largest prefix weight on any slot.
    unsupported_share
        Share of decisions whose first logged item the target would never choose.
    deterministic_share
        Share of decisions logged with propensity 1.0 in every slot (no exploration to learn from).
    warnings
        Plain-language reasons not to trust the estimate.
    """

    n: int
    effective_sample_size: float
    max_weight: float
    unsupported_share: float
    deterministic_share: float
    warnings: tuple[str, ...]


def diagnose(data: SlateData) -> Diagnostics:
    """Summarize the weights of ``data`` and list warnings."""
    weights = data.prefix_weights()
    first = weights[:, 0] if weights.size else np.zeros(0)
    ess = float(first.sum() ** 2 / (first**2).sum()) if (first > 0).any() else 0.0
    unsupported = float((data.target_propensity[:, 0] == 0).mean()) if data.n else 0.0
    deterministic = float(np.all((data.logged_propensity == 1.0) | ~data.mask, axis=1).mean()) if data.n else 0.0
    warnings = []
    if deterministic > 0:
        warnings.append(
            f"{deterministic:.0%} of decisions were logged by a deterministic policy (propensity 1.0 in every slot): "
            "the target has no support there unless it makes the same choices; evaluate on exploratory logs"
        )
    if ess < 0.1 * data.n:
        warnings.append(f"effective sample size {ess:.0f} is under 10% of {data.n} decisions: expect wide intervals")
    if weights.size and weights.max() > 100:
        warnings.append(f"largest importance weight is {weights.max():.0f}: IPS is dominated by a few decisions")
    return Diagnostics(
        data.n, ess, float(weights.max()) if weights.size else 0.0, unsupported, deterministic, tuple(warnings)
    )
