"""The learner: applies joined decisions to the policies in stream order and publishes versioned snapshots.

Snapshots and the learner's stream position are published by one Lua script that checks two things first: this
learner holds the lease (``{p}:learner:lease``, renewed every step) and the position is still the one it read. So
with several learners over one Redis exactly one applies each joined entry, once; a learner that loses the lease
(a pause longer than ``learner.lease_ttl_s``) drops its unpublished work and reloads what was published. A
restarted learner resumes exactly after the last entry its published snapshots include.

A record that could poison a model (a non-finite or out-of-range context value or reward, or a record that does
not parse) is skipped and counted (:attr:`Learner.skipped`), and a snapshot with non-finite values is never
published: the batch is dropped and the last published state reloaded. Servers poll the snapshot versions and
swap policies whole (:func:`refresh_policies`); a snapshot that does not load is logged and the old policy keeps
serving. The replay and update (CPU work) run on a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bandits.base import PolicyStateError
from bandits.registry import load_policy
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, DecisionLog
from offline_eval.replay import decisions
from server.recommender import PolicyBook
from server.settings import LearnerSettings, LimitSettings
from server.store import PUBLISHED, Store, joined_record

log = logging.getLogger(__name__)


class Learner:
    """Updates every variant's policy from the joined stream.

    Parameters
    ----------
    store
        Redis state.
    make_policies
        Builds a fresh copy of the configured policies (the learner's own, restored from Redis).
    index
        The index artifact the decisions were made with.
    settings
        Batch size, poll interval and lease.
    owner
        This process's identity (holds the lease).
    limits
        Largest context value and reward magnitude a record may carry to reach a model.
    """

    def __init__(
        self,
        store: Store,
        make_policies: Callable[[], PolicyBook],
        index: IndexArtifact,
        settings: LearnerSettings,
        owner: str,
        limits: LimitSettings,
    ) -> None:
        self.store, self.make_policies, self.index, self.settings, self.owner = (
            store,
            make_policies,
            index,
            settings,
            owner,
        )
        self.limits = limits
        self.policies = make_policies()
        self.keys = {key for key, _ in self.policies.items()}
        self.position = "0-0"
        self.restored = False
        self.leader = False
        self.applied = 0
        self.skipped = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="scout-learner")

    async def restore(self) -> None:
        """Reload the published snapshots and the stream position they include."""
        position: Any = await self.store.client.hget(self.store.learner, "position")
        policies = self.make_policies()
        await refresh_policies(self.store, policies)
        self.policies = policies
        self.position = position.decode() if position else "0-0"
        self.restored = True
        log.info("learner %s resumes after joined entry %s", self.owner, self.position)

    async def step(self) -> float:
        """Apply and publish the next batch if this learner holds the lease; returns the seconds to wait."""
        if not await self.store.acquire_lease(self.owner, self.settings.lease_ttl_s):
            if self.leader:
                log.warning("learner %s lost the lease; another learner publishes", self.owner)
            self.leader, self.restored = False, False
            return self.settings.poll_interval_s
        if not self.leader:
            log.info("learner %s holds the lease", self.owner)
            self.leader = True
        if not self.restored:
            await self.restore()
        return 0.0 if await self.apply_batch() >= self.settings.batch else self.settings.poll_interval_s

    async def apply_batch(self) -> int:
        """Apply the next batch of joined entries and publish; returns how many entries were read."""
        reply: Any = await self.store.client.xread({self.store.joined: self.position}, count=self.settings.batch)
        if not reply:
            return 0
        entries = reply[0][1]
        last = entries[-1][0]
        position = last.decode() if isinstance(last, bytes) else str(last)
        loop = asyncio.get_running_loop()
        snapshots, applied, skipped = await loop.run_in_executor(self._executor, self._learn, entries)
        outcome = await self.store.publish(
            self.owner, self.position, position, snapshots, self.settings.lease_ttl_s, applied, skipped
        )
        if outcome != PUBLISHED:
            log.warning("learner %s: publish refused (%d); reloading the published state", self.owner, outcome)
            self.restored = False
            return 0
        self.position = position
        self.applied += applied
        self.skipped += skipped
        return len(entries)

    def _learn(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> tuple[list[tuple[str, int, bytes]], int, int]:
        """Update the policies (on the learner thread); returns the snapshots to publish, applied and skipped."""
        records, skipped = [], 0
        for entry_id, fields in entries:
            record = self._usable(entry_id, fields)
            if record is None:
                skipped += 1
            else:
                records.append(record)
        batches = self._features(records)
        skipped += len(records) - sum(len(rewards) for _, rewards in batches.values())
        for key, (features, rewards) in batches.items():
            self.policies.get(*key).update(np.vstack(features), np.concatenate(rewards))
        snapshots = []
        for key in sorted(batches):
            policy = self.policies.get(*key)
            policy.version += 1
            state = policy.to_bytes()
            try:
                load_policy(state)
            except (PolicyStateError, ValueError) as exc:
                log.error("learner: %s/%s would publish an unusable snapshot (%s); batch skipped", *key, exc)
                self.restored = False
                return [], 0, len(entries)
            snapshots.append((self.store.policy_key(*key), policy.version, state))
        return snapshots, len(entries) - skipped, skipped

    def _usable(self, entry_id: Any, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
        """The entry as a record, or None (logged) when it must not reach a model."""
        try:
            record = joined_record(fields)
            context = [float(x) for x in record["context_values"]]
            rewards = [float(x) for x in record["rewards"]]
            wrong_index = record["index_version"] != self.index.version
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("learner: joined entry %r does not parse (%s); skipped", entry_id, exc)
            return None
        if (record.get("experiment"), record.get("variant")) not in self.keys:
            log.warning("learner: joined entry %r names an unknown experiment/variant; skipped", entry_id)
            return None
        if wrong_index:
            log.warning("learner: joined entry %r was made with index %s; skipped", entry_id, record["index_version"])
            return None
        if not all(math.isfinite(x) and abs(x) <= self.limits.max_context_abs for x in context) or not all(
            math.isfinite(x) and abs(x) <= self.limits.max_reward_abs for x in rewards
        ):
            log.warning(
                "learner: joined entry %r has a non-finite or out-of-range context value or reward; skipped", entry_id
            )
            return None
        return record

    def _features(
        self, records: list[dict[str, Any]]
    ) -> dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]]:
        """Served-slot features and rewards per (experiment, variant); a record that does not replay is dropped."""
        batches: dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        try:
            replayed = self._replay(records)
        except Exception:
            replayed = []
            for record in records:
                try:
                    replayed += self._replay([record])
                except Exception as exc:
                    log.warning("learner: event %s does not replay (%s); skipped", record.get("event_id"), exc)
        for record, features, rewards in replayed:
            group = batches[(record["experiment"], record["variant"])]
            group[0].append(features)
            group[1].append(rewards)
        return batches

    def _replay(self, records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
        if not records:
            return []
        columns = {name: [r.get(name) for r in records] for name in SCHEMA.names}
        return [
            (records[d.row], d.candidates.features[d.served], np.asarray(d.rewards, dtype=np.float64))
            for d in decisions(DecisionLog(columns), self.index)
        ]

    def close(self) -> None:
        """Release the learner thread."""
        self._executor.shutdown(wait=False)


async def refresh_policies(store: Store, policies: PolicyBook) -> int:
    """Swap in every snapshot newer than the policy being served; returns how many were swapped."""
    swapped = 0
    for (experiment, variant), current in policies.items():
        key = store.policy_key(experiment, variant)
        version: Any = await store.client.hget(key, "version")
        state: Any
        if version is None or int(version) <= current.version:
            continue
        try:
            state = await store.client.hget(key, "state")
            policies.swap(experiment, variant, load_policy(state or b""))
            swapped += 1
        except (PolicyStateError, ValueError) as exc:
            log.error("rejected snapshot %s (version %s): %s; keeping version %d", key, version, exc, current.version)
    return swapped


class Refresher:
    """Polls for new snapshots and swaps them into the serving policies."""

    def __init__(self, store: Store, policies: PolicyBook, interval_s: float) -> None:
        self.store, self.policies, self.interval_s = store, policies, interval_s

    async def step(self) -> float:
        """Swap in newer snapshots; returns the poll interval."""
        await refresh_policies(self.store, self.policies)
        return self.interval_s
