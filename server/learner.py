"""The learner: applies joined decisions to the policies in stream order and publishes versioned snapshots.

Snapshots and the learner's stream position are written in one transaction, so a restarted learner resumes
exactly after the last decision its published snapshots include. Servers poll the snapshot versions and swap
policies whole (:func:`refresh_policies`); a snapshot that does not load is logged and the old policy keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import numpy as np

from bandits.base import PolicyStateError
from bandits.registry import load_policy
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, DecisionLog
from offline_eval.replay import decisions
from server.joiner import _sleep
from server.recommender import PolicyBook
from server.settings import LearnerSettings
from server.store import Store, joined_record

log = logging.getLogger(__name__)


class Learner:
    """Updates every variant's policy from the joined stream.

    Parameters
    ----------
    store
        Redis state.
    policies
        The learner's own copies of the policies (restored from Redis by :meth:`restore`).
    index
        The index artifact the decisions were made with.
    settings
        Batch size and poll interval.
    """

    def __init__(self, store: Store, policies: PolicyBook, index: IndexArtifact, settings: LearnerSettings) -> None:
        self.store, self.policies, self.index, self.settings = store, policies, index, settings
        self.position = "0-0"

    async def restore(self) -> None:
        """Warm-start from the published snapshots and the stream position they include."""
        position: Any = await self.store.client.hget(self.store.learner, "position")
        self.position = position.decode() if position else "0-0"
        await refresh_policies(self.store, self.policies)
        log.info("learner resumes after joined entry %s", self.position)

    async def step(self) -> int:
        """Apply the next batch of joined decisions and publish; returns how many were applied."""
        reply: Any = await self.store.client.xread({self.store.joined: self.position}, count=self.settings.batch)
        if not reply:
            return 0
        entries = reply[0][1]
        records = [joined_record(fields) for _, fields in entries]
        usable = [r for r in records if r["index_version"] == self.index.version]
        if len(usable) < len(records):
            log.warning("skipped %d decisions made with another index version", len(records) - len(usable))
        updated = self._apply(usable)
        for key in updated:
            self.policies.get(*key).version += 1
        last = entries[-1][0]
        self.position = last.decode() if isinstance(last, bytes) else str(last)
        async with self.store.client.pipeline(transaction=True) as tx:
            for key in updated:
                policy = self.policies.get(*key)
                tx.hset(self.store.policy_key(*key), mapping={"version": policy.version, "state": policy.to_bytes()})
            tx.hset(self.store.learner, "position", self.position)
            await tx.execute()
        return len(records)

    def _apply(self, records: list[dict[str, Any]]) -> set[tuple[str, str]]:
        if not records:
            return set()
        columns = {name: [r.get(name) for r in records] for name in SCHEMA.names}
        batches: dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        for d in decisions(DecisionLog(columns), self.index):
            record = records[d.row]
            features, rewards = batches[(record["experiment"], record["variant"])]
            features.append(d.candidates.features[d.served])
            rewards.append(d.rewards)
        for key, (features, rewards) in batches.items():
            self.policies.get(*key).update(np.vstack(features), np.concatenate(rewards))
        return set(batches)

    async def run(self, stop: asyncio.Event) -> None:
        """Learn until ``stop`` is set."""
        await self.restore()
        while not stop.is_set():
            if await self.step() < self.settings.batch:
                await _sleep(stop, self.settings.poll_interval_s)


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


async def run_refresher(store: Store, policies: PolicyBook, interval_s: float, stop: asyncio.Event) -> None:
    """Poll for new snapshots every ``interval_s`` until ``stop`` is set."""
    while not stop.is_set():
        await refresh_policies(store, policies)
        await _sleep(stop, interval_s)
