"""Every estimator by name, for configuration and the command line."""

from __future__ import annotations

from collections.abc import Callable

from offline_eval.base import Estimator
from offline_eval.clipped_ips import ClippedIPS
from offline_eval.direct_method import DirectMethod
from offline_eval.doubly_robust import DoublyRobust
from offline_eval.independent_ips import IndependentIPS
from offline_eval.ips import IPS
from offline_eval.optimistic_shrinkage import OptimisticShrinkage
from offline_eval.pseudo_inverse import PseudoInverse
from offline_eval.rejection_sampling import RejectionSampling
from offline_eval.reward_interaction_ips import RIPS
from offline_eval.self_normalized_doubly_robust import SelfNormalizedDoublyRobust
from offline_eval.slate_ips import SlateIPS
from offline_eval.snips import SNIPS
from offline_eval.switch_doubly_robust import SwitchDoublyRobust

ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    cls.name: cls
    for cls in (
        RejectionSampling,
        DirectMethod,
        IPS,
        ClippedIPS,
        SNIPS,
        DoublyRobust,
        SelfNormalizedDoublyRobust,
        SwitchDoublyRobust,
        OptimisticShrinkage,
        SlateIPS,
        IndependentIPS,
        RIPS,
        PseudoInverse,
    )
}

DEFAULT = ("ips", "snips", "dr")


def create_estimators(names: tuple[str, ...] | list[str] = DEFAULT) -> tuple[Estimator, ...]:
    """Estimators by name (``all`` for every one); unknown names raise ``ValueError``."""
    if list(names) == ["all"]:
        names = tuple(ESTIMATORS)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {', '.join(unknown)}; known: {', '.join(ESTIMATORS)}")
    return tuple(ESTIMATORS[n]() for n in names)
