"""Policies by name, for configuration files and snapshots."""

from __future__ import annotations

from typing import Any

from bandits.base import Policy, PolicyStateError, read_snapshot
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.linucb import LinUCB
from bandits.softmax import Softmax
from bandits.thompson import LinearThompson
from bandits.vowpal import VowpalWabbit

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (EpsilonGreedy, LinUCB, Softmax, LinearThompson, VowpalWabbit)
}


def create_policy(name: str, feature_dim: int, params: dict[str, Any]) -> Policy:
    """Construct a fresh policy of type ``name``; unknown names and parameters raise ``ValueError``."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name].from_params(feature_dim, params)


def load_policy(data: bytes, params: dict[str, Any] | None = None) -> Policy:
    """Load any registered policy from :meth:`Policy.to_bytes` output, optionally overriding parameters."""
    meta, _ = read_snapshot(data)
    name = meta.get("policy")
    if name not in POLICIES:
        raise PolicyStateError(f"snapshot holds unknown policy {name!r}")
    return POLICIES[name].from_bytes(data, params)
