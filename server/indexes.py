"""The index versions a process may need: the one it serves and, from a versions root, the ones decisions name.

A decision records the ``index_version`` it was made with; the learner must rebuild it against that very version.
:class:`IndexVersions` hands out the current artifact and loads other versions from the versions root (the
directory :meth:`embeddings.index.IndexArtifact.publish` writes) on demand, keeping the few most recently used.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from embeddings.index import CURRENT, ArtifactError, IndexArtifact
from server.loops import freeze_heap

log = logging.getLogger(__name__)


def versions_root(path: Path) -> Path | None:
    """``path`` when it is a versions root (holds a ``CURRENT`` pointer), else None."""
    return path if (path / CURRENT).is_file() else None


class IndexVersions:
    """The current index artifact plus a small cache of other versions loaded from a versions root.

    Parameters
    ----------
    current
        The artifact being served.
    root
        The versions root other versions are loaded from; None means only ``current`` is known.
    keep
        How many versions besides the current one to keep loaded.
    """

    def __init__(self, current: IndexArtifact, root: Path | None = None, keep: int = 3) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.root, self.keep = root, keep
        self._current = current
        self._cache: OrderedDict[str, IndexArtifact] = OrderedDict()
        self._missing: set[str] = set()
        self._lock = threading.Lock()

    @property
    def current(self) -> IndexArtifact:
        """The artifact being served."""
        return self._current

    def set_current(self, artifact: IndexArtifact) -> None:
        """Make ``artifact`` the current version (the previous one stays cached)."""
        with self._lock:
            previous = self._current
            self._current = artifact
            self._remember(previous)
        freeze_heap()

    def get(self, version: str) -> IndexArtifact | None:
        """The artifact of ``version``, loaded from the root when needed; None (logged once) when unavailable."""
        with self._lock:
            if version == self._current.version:
                return self._current
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
            if self.root is None or version in self._missing:
                return None
        try:
            artifact = IndexArtifact.load_version(self.root, version)
        except (ArtifactError, OSError, ValueError) as exc:
            log.warning("index version %s is not available under %s (%s)", version, self.root, exc)
            with self._lock:
                self._missing.add(version)
            return None
        with self._lock:
            self._remember(artifact)
        freeze_heap()
        return artifact

    def _remember(self, artifact: IndexArtifact) -> None:
        if artifact.version == self._current.version or not self.keep:
            return
        self._cache[artifact.version] = artifact
        self._cache.move_to_end(artifact.version)
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)


def point_current(root: Path, version: str) -> None:
    """Atomically point ``root/CURRENT`` at ``version`` (servers watching the root swap it in)."""
    pointer = root / f".{CURRENT}.tmp"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / CURRENT)
