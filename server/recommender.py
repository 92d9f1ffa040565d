"""The Recommend path without transport: assign, retrieve, rank, and build the decision record."""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.base import Candidates, Policy
from bandits.emerging import EmergingRule
from bandits.features import build_features, feature_dim
from bandits.registry import create_policy
from embeddings.index import IndexArtifact
from server.assignment import assign
from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.settings import Experiment, Settings

log = logging.getLogger(__name__)
MAX_IDS = 1000
MAX_ID_LENGTH = 512


@dataclass(frozen=True)
class RecommendInput:
    """A Recommend request, transport-free."""

    unit_id: str
    surface: str
    num_items: int
    context: dict[str, float]
    seed_item_ids: tuple[str, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """A ranked slate: the record to log (log schema, without rewards) and the policy scores of served items."""

    record: dict[str, Any]
    scores: tuple[float, ...]


class PolicyBook:
    """The policy serving each (experiment, variant); swapped whole, so readers never need a lock."""

    def __init__(self, settings: Settings, embedding_dim: int) -> None:
        self._policies: dict[tuple[str, str], Policy] = {}
        for experiment in settings.experiments:
            dim = feature_dim(embedding_dim, len(experiment.context_keys))
            for v in experiment.variants:
                self._policies[(experiment.name, v.name)] = create_policy(v.policy, dim, dict(v.params))

    def get(self, experiment: str, variant: str) -> Policy:
        """The current policy of a variant."""
        return self._policies[(experiment, variant)]

    def swap(self, experiment: str, variant: str, policy: Policy) -> None:
        """Replace a variant's policy (must be of the same type and feature dimension)."""
        current = self._policies[(experiment, variant)]
        if policy.name != current.name or policy.feature_dim != current.feature_dim:
            raise ValueError(
                f"snapshot for {experiment}/{variant} is {policy.name} with {policy.feature_dim} features; "
                f"serving {current.name} with {current.feature_dim}"
            )
        self._policies[(experiment, variant)] = policy

    def items(self) -> list[tuple[tuple[str, str], Policy]]:
        """All (experiment, variant) keys with their policies."""
        return list(self._policies.items())


class Recommender:
    """Turns a request into a logged-ready decision.

    Parameters
    ----------
    settings
        Server settings (experiments, limits, reward window).
    index
        The loaded index artifact.
    policies
        The policies to rank with.
    seed
        Seed of the event ids, which seed each decision's sampling; None (production) draws them at random.
    """

    def __init__(self, settings: Settings, index: IndexArtifact, policies: PolicyBook, seed: int | None = None) -> None:
        self._ids = None if seed is None else random.Random(seed)
        self.settings = settings
        self.index = index
        self.policies = policies
        self.rules: dict[str, EmergingRule] = {
            e.name: e.emerging.resolve(index.creator_ids, index.creator_popularity) for e in settings.experiments
        }

    def validate(self, request: RecommendInput) -> Experiment:
        """Check every field; raise ``InvalidArgument`` or ``NotFound`` naming the field."""
        if not request.unit_id:
            raise InvalidArgument("unit_id must be a non-empty string")
        if len(request.unit_id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"unit_id must be at most {MAX_ID_LENGTH} characters")
        if not request.surface:
            raise InvalidArgument("surface must be a non-empty string")
        limit = self.settings.server.max_num_items
        if not 1 <= request.num_items <= limit:
            raise InvalidArgument(f"num_items must be between 1 and {limit}, got {request.num_items}")
        experiment = self.settings.experiment_for(request.surface)
        if experiment is None:
            known = sorted(s for e in self.settings.experiments for s in e.surfaces)
            raise NotFound(f"surface {request.surface!r} has no experiment; configured surfaces: {known}")
        for key, value in request.context.items():
            if key not in experiment.context_keys:
                raise InvalidArgument(
                    f"context[{key!r}] is not a context key of experiment {experiment.name!r}; "
                    f"known: {list(experiment.context_keys)}"
                )
            if not math.isfinite(value):
                raise InvalidArgument(f"context[{key!r}] must be finite, got {value}")
        for field in ("seed_item_ids", "exclude_item_ids"):
            ids = getattr(request, field)
            if len(ids) > MAX_IDS:
                raise InvalidArgument(f"{field} may hold at most {MAX_IDS} ids, got {len(ids)}")
            if any(not i or len(i) > MAX_ID_LENGTH for i in ids):
                raise InvalidArgument(f"{field} must hold non-empty ids of at most {MAX_ID_LENGTH} characters")
        return experiment

    def decide(self, request: RecommendInput) -> Decision:
        """Assign, retrieve, rank; the returned record holds everything needed to replay the decision."""
        experiment = self.validate(request)
        variant = assign(experiment, request.unit_id)
        policy = self.policies.get(experiment.name, variant.name)
        index = self.index
        seeds = [i for i in request.seed_item_ids if index.has(i)]
        excluded = index.positions([i for i in request.exclude_item_ids if index.has(i)])
        query = index.query(index.positions(seeds))
        found = index.search(query, experiment.candidates, exclude=excluded)
        if len(found.positions) == 0:
            raise FailedPrecondition("no candidates are left after exclude_item_ids")
        context = np.array([request.context.get(k, 0.0) for k in experiment.context_keys])
        rule = self.rules[experiment.name]
        positions = found.positions
        emerging = rule.flags(index.creator_popularity[positions], index.creator_age_days[positions])
        candidates = Candidates(build_features(query, index.vectors[positions], context), emerging)
        event_id = uuid.uuid4() if self._ids is None else uuid.UUID(int=self._ids.getrandbits(128), version=4)
        slate = policy.rank(candidates, request.num_items, np.random.default_rng(event_id.int))
        served = positions[slate.indices]
        record = {
            "event_id": event_id.hex,
            "decided_at": int(time.time() * 1000),
            "unit_id": request.unit_id,
            "surface": request.surface,
            "experiment": experiment.name,
            "variant": variant.name,
            "policy": policy.name,
            "policy_version": str(policy.version),
            "index_version": index.version,
            "emerging_rule": json.dumps(rule.to_dict(), sort_keys=True),
            "context_keys": list(experiment.context_keys),
            "context_values": context.tolist(),
            "seed_item_ids": seeds,
            "exclude_item_ids": list(request.exclude_item_ids),
            "candidate_ids": index.item_ids[positions].tolist(),
            "item_ids": index.item_ids[served].tolist(),
            "creator_ids": index.creator_ids[served].tolist(),
            "propensities": slate.propensities.tolist(),
            "slate_probability": slate.probability,
            "emerging": emerging[slate.indices].tolist(),
            "default_reward": self.settings.join.default_reward,
        }
        return Decision(record, tuple(slate.scores[slate.indices].tolist()))
