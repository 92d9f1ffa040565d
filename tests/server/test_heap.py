"""Processes that load an index freeze their heap out of the cyclic garbage collector's reach afterwards: each full
collection used to walk the index's millions of references (27 ms at 1M items) on whichever thread allocated."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from conftest import make_settings, run_server

from embeddings.index import IndexArtifact
from server.indexes import IndexVersions

pytestmark = pytest.mark.redis


def test_a_started_server_freezes_what_it_loaded(index_dir: Path, clean_redis: str, tmp_path: Path) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    running, thread = run_server(make_settings(index_dir, clean_redis, tmp_path / "logs"))
    try:
        frozen = gc.get_freeze_count()
        index = running.server.service.recommender.index
        # The served index's objects (its id lookup among them) are no longer tracked by the generations.
        assert frozen > 0 and not any(obj is index.__dict__ for obj in gc.get_objects())
    finally:
        running.stop()
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=10)
        gc.unfreeze()


def test_loading_another_index_version_freezes_it(index_dir: Path, index: IndexArtifact) -> None:
    gc.unfreeze()
    versions = IndexVersions(index)
    versions.set_current(IndexArtifact.load(index_dir))
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
