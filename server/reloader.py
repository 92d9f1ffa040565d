"""Index hot swap: a running server watches its versions root and serves a newly published index version.

When ``settings.index`` is a versions root (the directory :meth:`embeddings.index.IndexArtifact.publish` writes,
holding ``CURRENT``), :class:`IndexReloader` reads ``CURRENT`` every ``server.index_watch_interval_s``. When it names
another version, the new artifact is loaded and a new :class:`~server.recommender.Recommender` (its emerging rules
depend on the index) is built on a worker thread, off the event loop; then the service's reference is replaced in
one assignment. A request reads that reference once, so requests in flight finish on the old recommender and
index, and every later decision records the new ``index_version``. The learner rebuilds each decision against the
version it names (:class:`server.indexes.IndexVersions`).

A version that does not load, or whose embedding dimension differs from the served one (the policies' features
would no longer fit), is refused: logged once, the old version keeps serving, and it is not retried until
``CURRENT`` names yet another version.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from embeddings.index import ArtifactError, IndexArtifact
from server.indexes import IndexVersions
from server.recommender import Recommender
from server.settings import Settings

log = logging.getLogger(__name__)


class Serving(Protocol):
    """What the reloader swaps: the service's recommender reference."""

    recommender: Recommender


class IndexReloader:
    """Watches a versions root and swaps a new current version into ``service``.

    Parameters
    ----------
    root
        The versions root.
    service
        Holds the ``recommender`` being served; its reference is replaced whole.
    versions
        The process's index versions (the learner's too); the new artifact becomes current there.
    settings
        Server settings (the new recommender's, and the watch interval).
    """

    def __init__(self, root: Path, service: Serving, versions: IndexVersions, settings: Settings) -> None:
        self.root, self.service, self.versions, self.settings = root, service, versions, settings
        self.swaps = 0
        self._refused: str | None = None

    async def step(self) -> float:
        """Swap in the version ``CURRENT`` names if it is new; returns the watch interval."""
        await self.reload()
        return self.settings.server.index_watch_interval_s

    async def reload(self) -> bool:
        """Load and serve the current version if it differs from the served one; returns whether it swapped."""
        try:
            version = await asyncio.to_thread(IndexArtifact.current_version, self.root)
        except ArtifactError as exc:  # serving goes on with the loaded index; the pointer may be mid-rewrite
            if self._refused != "":
                log.warning("index watch: %s; keeping %s", exc, self.service.recommender.index.version)
            self._refused = ""
            return False
        old = self.service.recommender
        if version == old.index.version or version == self._refused:
            return False
        try:
            new = await asyncio.to_thread(self._build, version, old)
        except (ArtifactError, OSError, ValueError) as exc:
            log.error("index %s under %s cannot be served (%s); keeping %s", version, self.root, exc, old.index.version)
            self._refused = version
            return False
        self.service.recommender = new  # one assignment: requests in flight keep the recommender they read
        self.versions.set_current(new.index)
        self.swaps += 1
        log.info("index hot swap: now serving %s (was %s)", version, old.index.version)
        return True

    def _build(self, version: str, old: Recommender) -> Recommender:
        artifact = IndexArtifact.load_version(self.root, version)
        if artifact.dim != old.index.dim:
            raise ValueError(
                f"version {version} has embedding dimension {artifact.dim}, the served index {old.index.dim}: the "
                "policies' features would not fit (restart with fresh policies to change the dimension)"
            )
        new = Recommender(self.settings, artifact, old.policies)
        new._ids = old._ids  # one event-id sequence across swaps (it is seeded only in demos and tests)
        return new
