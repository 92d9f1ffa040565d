"""The Recommend path without transport: assign, retrieve, rank, and build the decision record."""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.base import Candidates, Policy, Slate
from bandits.emerging import EmergingRule, merge_candidates
from bandits.features import feature_dim
from bandits.registry import create_policy
from embeddings.index import IndexArtifact
from server.assignment import PAUSED, Placement
from server.errors import FailedPrecondition
from server.settings import Experiment, Settings, Variant, config_version
from server.validation import MAX_ID_CHARS, MAX_IDS, check_recommend

log = logging.getLogger(__name__)
MAX_ID_LENGTH = MAX_ID_CHARS  # the names earlier callers import
__all__ = ["MAX_IDS", "MAX_ID_LENGTH", "Decision", "PolicyBook", "RecommendInput", "Recommender"]


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
    reward_window_s: float = 0.0


def shadow_key(variant: str, shadow: str) -> str:
    """The book and snapshot key of a variant's shadow policy (learned and published like a variant)."""
    return f"{variant}/shadow:{shadow}"


class PolicyBook:
    """The policy serving each (experiment, variant); swapped whole, so readers never need a lock."""

    def __init__(self, settings: Settings, embedding_dim: int) -> None:
        self._policies: dict[tuple[str, str], Policy] = {}
        #: Paused (experiment, variant) pairs, refreshed from Redis; replaced whole.
        self.paused: frozenset[tuple[str, str]] = frozenset()
        #: Each variant's shadows as (shadow name, key under which the book holds the shadow's policy).
        self.shadows: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        #: Each key's generation and warm start: snapshots of another generation are not this policy's.
        self.lineage: dict[tuple[str, str], tuple[int, str]] = {}
        for experiment in settings.experiments:
            dim = feature_dim(embedding_dim, len(experiment.context_keys))
            for v in experiment.variants:
                try:
                    self._policies[(experiment.name, v.name)] = v.initial_policy(dim)
                except ValueError as exc:
                    raise ValueError(f"experiment {experiment.name!r}, variant {v.name!r}: warm_start: {exc}") from exc
                lineage = (v.generation, str(v.warm_start or ""))
                self.lineage[(experiment.name, v.name)] = lineage
                keys = []
                for shadow in v.shadows:
                    key = shadow_key(v.name, shadow.name)
                    self._policies[(experiment.name, key)] = create_policy(shadow.policy, dim, dict(shadow.params))
                    self.lineage[(experiment.name, key)] = lineage
                    keys.append((shadow.name, key))
                if keys:
                    self.shadows[(experiment.name, v.name)] = tuple(keys)

    def carry_over(self, old: PolicyBook) -> None:
        """Keep ``old``'s policies (their learned state) and pauses for the variants this book shares with it.

        A variant whose generation or warm start changed starts over instead.
        """
        for key, policy in old.items():
            if key in self._policies and self.lineage[key] == old.lineage.get(key):
                self._policies[key] = policy
        self.paused = frozenset(key for key in old.paused if key in self._policies)

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

    def generation(self, experiment: str, variant: str) -> int:
        """The generation of a variant's (or shadow key's) learned state."""
        return self.lineage[(experiment, variant)][0]

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
        seed = settings.server.event_id_seed if seed is None else seed
        self._ids = None if seed is None else random.Random(seed)
        self._entropy: list[int] = []  # 128-bit values from os.urandom, drawn 256 at a time (one syscall)
        self.settings = settings
        self.index = index
        self.policies = policies
        #: Each variant's emerging-creator rule, resolved on this index (the variant's own, else its experiment's).
        self.rules: dict[tuple[str, str], EmergingRule] = {}
        #: For variants with a retrieval-side quota: the index positions of emerging creators' items.
        self.emerging_positions: dict[tuple[str, str], np.ndarray] = {}
        resolved: dict[EmergingRule, EmergingRule] = {}
        for e in settings.experiments:
            for v in e.variants:
                rule = v.emerging or e.emerging
                if rule not in resolved:
                    resolved[rule] = rule.resolve(index.creator_ids, index.creator_popularity)
                self.rules[(e.name, v.name)] = resolved[rule]
                if v.emerging_candidates:
                    flags = resolved[rule].flags(index.creator_popularity, index.creator_age_days)
                    self.emerging_positions[(e.name, v.name)] = np.flatnonzero(flags).astype(np.int64)
        self.config_version = config_version(settings)
        self._rule_json = {key: json.dumps(rule.to_dict(), sort_keys=True) for key, rule in self.rules.items()}
        self.fallbacks = 0
        self._warned: set[tuple[str, str, str]] = set()

    def validate(self, request: RecommendInput) -> Placement:
        """Check every field (see :mod:`server.validation`); raise ``InvalidArgument`` or ``NotFound``."""
        return check_recommend(
            self.settings,
            request.unit_id,
            request.surface,
            request.num_items,
            request.context,
            request.seed_item_ids,
            request.exclude_item_ids,
        )

    def decide(self, request: RecommendInput) -> Decision:
        """Assign, retrieve, rank; the returned record holds everything needed to replay the decision."""
        placement = self.validate(request)
        experiment, variant, assignment = placement.experiment, placement.variant, placement.assignment
        paused = self.policies.paused
        if paused and (experiment.name, variant.name) in paused:
            variant, assignment = self.stand_in(experiment, paused), PAUSED
        policy = self.policies.get(experiment.name, variant.name)
        index = self.index
        seeds = [i for i in request.seed_item_ids if index.has(i)]
        excluded_ids = list(dict.fromkeys(i for i in request.exclude_item_ids if index.has(i)))
        excluded = index.positions(excluded_ids)
        query = index.query(index.positions(seeds))
        found = index.search(query, experiment.candidates, exclude=excluded)
        if len(found.positions) == 0:
            raise FailedPrecondition("exclude_item_ids leave no candidates")
        context = np.array([request.context.get(k, 0.0) for k in experiment.context_keys])
        rule = self.rules[(experiment.name, variant.name)]
        positions = found.positions
        quota = min(variant.emerging_candidates, len(positions))
        via_quota = 0
        if quota:  # a second search restricted to emerging creators; the merge is logged as candidate_ids
            allowed = self.emerging_positions[(experiment.name, variant.name)]
            extra = index.search(query, len(positions), exclude=excluded, allowed=allowed).positions
            ids, flags = merge_candidates(
                index.item_ids[positions].tolist(), index.item_ids[extra].tolist(), len(positions), quota
            )
            positions = index.positions(ids)
            via_quota = sum(flags)
        emerging = rule.flags(index.creator_popularity[positions], index.creator_age_days[positions])
        # ids feed the policies' item/creator terms, exactly as replay and the learner do; the parts let LinUCB
        # score its confidence width in O(K d^2) instead of O(K F^2)
        candidate_ids = index.item_ids[positions]
        candidates = Candidates.from_parts(
            query,
            index.vectors[positions],
            context,
            emerging,
            item_ids=candidate_ids,
            creator_ids=index.creator_ids[positions],
        )
        event_id = self._event_id()
        slate = self._rank(policy, candidates, request.num_items, event_id.int, (experiment.name, variant.name))
        served = positions[slate.indices]
        shadows = self._shadows(experiment.name, variant.name, candidates, slate.indices)
        join = self.settings.join
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
            "emerging_rule": self._rule_json[(experiment.name, variant.name)],
            "context_keys": list(experiment.context_keys),
            "context_values": context.tolist(),
            "seed_item_ids": seeds,
            "exclude_item_ids": excluded_ids,
            "candidate_ids": candidate_ids.tolist(),
            "item_ids": index.item_ids[served].tolist(),
            "creator_ids": index.creator_ids[served].tolist(),
            "propensities": slate.propensities.tolist(),
            "slate_probability": slate.probability,
            "emerging": emerging[slate.indices].tolist(),
            "emerging_candidates": via_quota,
            "default_reward": join.default_reward if experiment.default_reward is None else experiment.default_reward,
            "require_exposure": experiment.require_exposure,
            "reward_aggregation": experiment.reward_aggregation,
            "config_version": self.config_version,
            "assignment": assignment,
            "shadows": shadows,
        }
        window = join.reward_window_s if experiment.reward_window_s is None else experiment.reward_window_s
        return Decision(record, tuple(slate.scores[slate.indices].tolist()), window)

    def _event_id(self) -> uuid.UUID:
        """A version-4 id: from os.urandom as ``uuid.uuid4`` (unguessable), or from the seed in demos and tests."""
        if self._ids is not None:
            return uuid.UUID(int=self._ids.getrandbits(128), version=4)
        try:
            bits = self._entropy.pop()  # atomic under the GIL: decide threads never share a value
        except IndexError:
            block = os.urandom(16 * 256)
            self._entropy = [int.from_bytes(block[i : i + 16], "big") for i in range(0, len(block), 16)]
            bits = self._entropy.pop()
        return uuid.UUID(int=bits, version=4)

    def _shadows(self, experiment: str, variant: str, candidates: Candidates, indices: np.ndarray) -> str:
        """JSON of each shadow's probabilities of the served slate: policy, version, per-slot propensities, product.

        The propensity of slot k is the shadow's probability of the served item given the served items before it,
        the same conditional probability the served policy logs, so offline evaluation treats both alike. A shadow
        whose numbers are not finite is left out (and logged once), never failing the request.
        """
        keys = self.policies.shadows.get((experiment, variant))
        if not keys:
            return "{}"
        out: dict[str, Any] = {}
        slots = np.arange(len(indices))
        for name, key in keys:
            shadow = self.policies.get(experiment, key)
            with np.errstate(over="ignore", invalid="ignore"):
                p = shadow.slot_distributions(candidates, indices)[slots, indices]
            if not (np.isfinite(p).all() and (p >= 0).all()):
                warned = (experiment, key, str(shadow.version))
                if warned not in self._warned:
                    self._warned.add(warned)
                    log.error("shadow %s of %s/%s (version %s) gave non-finite probabilities", name, *warned)
                continue
            out[name] = {
                "policy": shadow.name,
                "version": shadow.version,
                "propensities": p.tolist(),
                "slate_probability": float(np.prod(p)),
            }
        return json.dumps(out, sort_keys=True)

    @staticmethod
    def stand_in(experiment: Experiment, paused: frozenset[tuple[str, str]]) -> Variant:
        """The variant serving a paused variant's units: the experiment's first unpaused one."""
        for candidate in experiment.variants:
            if (experiment.name, candidate.name) not in paused:
                return candidate
        raise FailedPrecondition(f"every variant of experiment {experiment.name!r} is paused")

    def _rank(self, policy: Policy, candidates: Candidates, num_items: int, seed: int, key: tuple[str, str]) -> Slate:
        """The policy's slate, or a uniformly random one when the policy's numbers are not finite.

        A policy whose state overflowed would serve and log NaN scores and propensities; instead the slate is
        drawn uniformly over the candidates (slot k's propensity is exactly ``1 / (K - k)``), served with score 0,
        counted in :attr:`fallbacks` and logged once per policy version.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is what this guards against; no warnings
            try:  # scored once: the slate carries every candidate's score, checked below
                slate: Slate | None = policy.rank(candidates, num_items, np.random.default_rng(seed))
            except (ValueError, FloatingPointError, ZeroDivisionError):  # sampling refuses non-finite weights
                slate = None
            if slate is not None:
                p = slate.propensities
                if np.isfinite(slate.scores).all() and np.isfinite(p).all() and ((p > 0) & (p <= 1 + 1e-9)).all():
                    return slate
        self.fallbacks += 1
        warned = (*key, str(policy.version))
        if warned not in self._warned:
            self._warned.add(warned)
            log.error(
                "policy %s of %s/%s (version %s) produced non-finite scores or propensities; serving uniformly "
                "random slates until a finite snapshot replaces it",
                policy.name,
                *warned,
            )
        return uniform_slate(candidates.count, num_items, np.random.default_rng(seed))


def uniform_slate(count: int, num_items: int, rng: np.random.Generator) -> Slate:
    """``min(num_items, count)`` of ``count`` candidates drawn uniformly without replacement, exact propensities."""
    n = min(num_items, count)
    indices = rng.permutation(count)[:n].astype(np.int64)
    propensities = 1.0 / (count - np.arange(n, dtype=np.float64))
    return Slate(indices=indices, propensities=propensities, scores=np.zeros(count))
