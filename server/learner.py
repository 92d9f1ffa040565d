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

A batch is applied without a per-decision loop: the records of each (experiment, variant), split into consecutive
runs of one index version, become one Arrow table whose served items are rebuilt with array operations
(:func:`offline_eval.served.served_batch`) and learned with :meth:`bandits.base.Policy.update_batch` (slot-aware).
Each run is rebuilt against the index version its decisions name (:class:`server.indexes.IndexVersions` loads it
from the versions root); decisions of a version that cannot be loaded are skipped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from bandits.base import PolicyStateError
from bandits.registry import load_policy
from embeddings.index import IndexArtifact
from offline_eval.logs import LogError
from offline_eval.served import SERVED_COLUMNS, SERVED_SCHEMA, ServedBatch, served_batch
from server.indexes import IndexVersions
from server.recommender import PolicyBook
from server.settings import LearnerSettings, LimitSettings
from server.store import PUBLISHED, Store, joined_record, stream_id

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
        The index artifact the decisions were made with, or the index versions (a decision is rebuilt against the
        version it names; decisions naming a version that cannot be loaded are skipped and counted).
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
        index: IndexArtifact | IndexVersions,
        settings: LearnerSettings,
        owner: str,
        limits: LimitSettings,
    ) -> None:
        self.store, self.make_policies, self.settings, self.owner = store, make_policies, settings, owner
        self.indexes = index if isinstance(index, IndexVersions) else IndexVersions(index)
        self.limits = limits
        self.policies = make_policies()
        self.keys = {key for key, _ in self.policies.items()}
        self.position = "0-0"  # as published: one stream id per shard, comma-separated
        self.positions = ["0-0"] * store.shards
        self.restored = False
        self.leader = False
        self.applied = 0
        self.skipped = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="scout-learner")

    def reconfigure(self, make_policies: Callable[[], PolicyBook]) -> None:
        """Learn another set of variants (a config reload): the next step restores them from the published state."""
        self.make_policies = make_policies
        self.keys = {key for key, _ in make_policies().items()}
        self.restored = False

    async def restore(self) -> None:
        """Reload the published snapshots and the stream position they include."""
        position, positions = await self.store.positions()
        policies = self.make_policies()
        await refresh_policies(self.store, policies)
        self.policies = policies
        self.position, self.positions = position, positions
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
        """Apply the next batch of joined entries and publish; returns how many entries were read.

        The batch is the oldest ``learner.batch`` entries over all shards' streams, merged by entry id (time).
        """
        merged: list[tuple[tuple[int, int], int, Any, dict[bytes, bytes]]] = []
        for shard, stream in enumerate(self.store.joined_keys):
            reply: Any = await self.store.client.xread({stream: self.positions[shard]}, count=self.settings.batch)
            for entry_id, fields in reply[0][1] if reply else ():
                text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                merged.append((stream_id(text), shard, text, fields))
        if not merged:
            return 0
        merged.sort(key=lambda e: e[:2])
        merged = merged[: self.settings.batch]
        positions = list(self.positions)
        for _, shard, text, _ in merged:
            positions[shard] = text
        entries = [(text, fields) for _, _, text, fields in merged]
        position = ",".join(positions)
        loop = asyncio.get_running_loop()
        snapshots, applied, skipped = await loop.run_in_executor(self._executor, self._learn, entries)
        outcome = await self.store.publish(
            self.owner, self.position, position, snapshots, self.settings.lease_ttl_s, applied, skipped
        )
        if outcome != PUBLISHED:
            log.warning("learner %s: publish refused (%d); reloading the published state", self.owner, outcome)
            self.restored = False
            return 0
        self.position, self.positions = position, positions
        self.applied += applied
        self.skipped += skipped
        return len(entries)

    def _learn(self, entries: list[tuple[Any, dict[bytes, bytes]]]) -> tuple[list[tuple[str, int, bytes]], int, int]:
        """Update the policies (on the learner thread); returns the snapshots to publish, applied and skipped."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        skipped = 0
        for entry_id, fields in entries:
            record = self._usable(entry_id, fields)
            if record is None:
                skipped += 1
            else:
                groups[(record["experiment"], record["variant"])].append(record)
        changed = []
        for key, records in groups.items():
            policy = self.policies.get(*key)
            # In stream order: consecutive records of one index version form one batch.
            for version, run in _runs(records):
                index = self.indexes.get(version)
                if index is None:
                    log.warning(
                        "learner: %d entries were made with index %s, which is not available; skipped",
                        len(run),
                        version,
                    )
                    skipped += len(run)
                    continue
                for batch in self._served(run, index):
                    if batch is None:
                        skipped += 1
                        continue
                    policy.update_batch(batch.candidates, batch.served, batch.rewards, batch.propensities)
                    if key not in changed:
                        changed.append(key)
                    for _, shadow in self.policies.shadows.get(key, ()):  # shadows learn from their variant's data
                        shadow_key = (key[0], shadow)
                        self.policies.get(*shadow_key).update_batch(
                            batch.candidates, batch.served, batch.rewards, batch.propensities
                        )
                        if shadow_key not in changed:
                            changed.append(shadow_key)
        snapshots = []
        for key in sorted(changed):
            policy = self.policies.get(*key)
            policy.version += 1
            state = policy.to_bytes()
            try:
                load_policy(state)
            except (PolicyStateError, ValueError) as exc:
                log.error("learner: %s/%s would publish an unusable snapshot (%s); batch skipped", *key, exc)
                self.restored = False
                return [], 0, len(entries)
            snapshots.append((self.store.policy_key(*key, self.policies.generation(*key)), policy.version, state))
        return snapshots, len(entries) - skipped, skipped

    def _usable(self, entry_id: Any, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
        """The entry as a record, or None (logged) when it must not reach a model."""
        try:
            record = joined_record(fields)
            context = [float(x) for x in record["context_values"]]
            rewards = [float(x) for x in record["rewards"]]
            if not isinstance(record["index_version"], str):
                raise TypeError("index_version is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("learner: joined entry %r does not parse (%s); skipped", entry_id, exc)
            return None
        if record.get("require_exposure") and not record.get("exposed"):
            return None  # never shown: logged and exported, but not evidence for training
        if (record.get("experiment"), record.get("variant")) not in self.keys:
            log.warning("learner: joined entry %r names an unknown experiment/variant; skipped", entry_id)
            return None
        if not all(math.isfinite(x) and abs(x) <= self.limits.max_context_abs for x in context) or not all(
            math.isfinite(x) and abs(x) <= self.limits.max_reward_abs for x in rewards
        ):
            log.warning(
                "learner: joined entry %r has a non-finite or out-of-range context value or reward; skipped", entry_id
            )
            return None
        return record

    def _served(self, records: list[dict[str, Any]], index: IndexArtifact) -> list[ServedBatch | None]:
        """The served items of ``records`` as one batch; when that fails, record by record (None: does not replay)."""
        try:
            return [served_batch(_table(records), index)]
        except (LogError, ValueError, TypeError, KeyError, pa.ArrowException):
            pass
        out: list[ServedBatch | None] = []
        for record in records:
            try:
                out.append(served_batch(_table([record]), index))
            except (LogError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
                log.warning("learner: event %s does not replay (%s); skipped", record.get("event_id"), exc)
                out.append(None)
        return out

    def close(self) -> None:
        """Release the learner thread."""
        self._executor.shutdown(wait=False)


def _runs(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Consecutive records grouped by their index version, in order."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for record in records:
        if runs and runs[-1][0] == record["index_version"]:
            runs[-1][1].append(record)
        else:
            runs.append((record["index_version"], [record]))
    return runs


def _table(records: list[dict[str, Any]]) -> pa.Table:
    """The served-item columns of ``records`` as an Arrow table."""
    return pa.Table.from_pydict({name: [r.get(name) for r in records] for name in SERVED_COLUMNS}, schema=SERVED_SCHEMA)


async def refresh_policies(store: Store, policies: PolicyBook) -> int:
    """Swap in every snapshot newer than the policy being served; returns how many were swapped."""
    swapped = 0
    for (experiment, variant), current in policies.items():
        key = store.policy_key(experiment, variant, policies.generation(experiment, variant))
        version: Any = await store.client.hget(key, "version")
        state: Any
        if version is None or int(version) <= current.version:
            continue
        try:
            state = await store.client.hget(key, "state")
            # Loading inverts the F-by-F matrix (milliseconds at F = 257): off the event loop that serves requests.
            policies.swap(experiment, variant, await asyncio.to_thread(load_policy, state or b""))
            swapped += 1
        except (PolicyStateError, ValueError) as exc:
            log.error("rejected snapshot %s (version %s): %s; keeping version %d", key, version, exc, current.version)
    return swapped


class Refresher:
    """Polls for new snapshots and swaps them into the serving policies."""

    def __init__(self, store: Store, policies: PolicyBook, interval_s: float) -> None:
        self.store, self.policies, self.interval_s = store, policies, interval_s

    async def step(self) -> float:
        """Swap in newer snapshots and the paused variants; returns the poll interval."""
        await refresh_policies(self.store, self.policies)
        self.policies.paused = await self.store.paused()
        return self.interval_s
