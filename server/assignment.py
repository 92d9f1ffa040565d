"""Assignment of units to experiments (layers, traffic, holdouts) and to variants, by salted hashes.

``bucket(salt, unit) = int.from_bytes(sha256(f"{salt}:{unit}".encode("utf-8")).digest()[:8], "big") / 2**64``
is uniform in [0, 1). For a request on a surface:

1. **Layer.** The experiments filling the surface share one layer (``layer``, default: the experiment's own name).
   Each experiment of the layer owns ``[start, start + traffic)`` of the layer's bucket space, in config order
   over every experiment of that layer. The unit is in the experiment whose range holds
   ``bucket("layer:" + layer, unit)``; in none of them (ranges sum below 1), it is *outside*: the first experiment
   filling the surface serves it with its first variant, logged ``assignment="outside"``.
2. **Holdout.** Inside an experiment, a unit with ``bucket(salt + ":holdout", unit) < holdout`` is held out: served
   by the first variant, logged ``assignment="holdout"``.
3. **Variant.** Otherwise the unit gets the first variant whose cumulative normalized weight exceeds
   ``bucket(salt, unit)`` (``assignment="variant"``).

Each step uses its own salt, so the three draws are independent, and the same unit always gets the same answer
under the same configuration. ``protos/assignment_vectors.json`` holds fixed vectors another language can check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from server.settings import Experiment, Settings, Variant

VARIANT, HOLDOUT, OUTSIDE, PAUSED = "variant", "holdout", "outside", "paused"


def bucket(salt: str, unit_id: str) -> float:
    """The unit's position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(experiment: Experiment, unit_id: str) -> Variant:
    """The variant ``unit_id`` belongs to in ``experiment`` (step 3 only)."""
    point = bucket(experiment.salt, unit_id) * sum(v.weight for v in experiment.variants)
    cumulative = 0.0
    for variant in experiment.variants:
        cumulative += variant.weight
        if point < cumulative:
            return variant
    return experiment.variants[-1]


@dataclass(frozen=True)
class Placement:
    """Where a unit's request lands: the experiment, the variant that serves it, and why (``assignment``)."""

    experiment: Experiment
    variant: Variant
    assignment: str


def place(settings: Settings, surface: str, unit_id: str) -> Placement | None:
    """Steps 1-3 for a request on ``surface``; None when no experiment fills it."""
    candidates = settings.experiments_for(surface)
    if not candidates:
        return None
    experiment = candidates[0]
    if len(candidates) > 1 or experiment.traffic < 1.0:
        point = bucket(f"layer:{experiment.layer_name}", unit_id)
        inside = [e for e in candidates if _within(settings.layer_range(e), point)]
        if not inside:
            return Placement(experiment, experiment.variants[0], OUTSIDE)
        experiment = inside[0]
    if experiment.holdout > 0 and bucket(f"{experiment.salt}:holdout", unit_id) < experiment.holdout:
        return Placement(experiment, experiment.variants[0], HOLDOUT)
    return Placement(experiment, assign(experiment, unit_id), VARIANT)


def _within(span: tuple[float, float], point: float) -> bool:
    return span[0] <= point < span[1]
