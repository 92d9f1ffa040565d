"""Salted-hash assignment of units to variants.

``bucket = int(sha256(f"{salt}:{unit_id}")[:8 bytes], big-endian) / 2**64`` is uniform in [0, 1); the unit gets
the first variant whose cumulative normalized weight exceeds its bucket. The same unit and salt always give the
same variant; a new salt reshuffles units independently of other experiments.
"""

from __future__ import annotations

import hashlib

from server.settings import Experiment, Variant


def bucket(salt: str, unit_id: str) -> float:
    """The unit's position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(experiment: Experiment, unit_id: str) -> Variant:
    """The variant ``unit_id`` belongs to in ``experiment``."""
    point = bucket(experiment.salt, unit_id) * sum(v.weight for v in experiment.variants)
    cumulative = 0.0
    for variant in experiment.variants:
        cumulative += variant.weight
        if point < cumulative:
            return variant
    return experiment.variants[-1]
