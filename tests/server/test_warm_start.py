"""A variant can start from a snapshot file (warm start) and be reset by bumping its generation in the config
(real Redis; the learner publishes under the new generation and the old generation's snapshot is ignored)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from conftest import make_settings
from test_runtime import _decisions

from bandits.features import feature_dim
from bandits.linucb import LinUCB
from embeddings.index import IndexArtifact
from server.learner import Learner, refresh_policies
from server.recommender import PolicyBook
from server.settings import Settings, SettingsError, load_settings
from server.store import Store

pytestmark = pytest.mark.redis
EXPERIMENT = "home-ranking"


def with_variant(settings: Settings, **changes: object) -> Settings:
    """``settings`` with the linucb variant of the default experiment changed."""
    experiment = settings.experiments[0]
    variants = tuple(replace(v, **changes) if v.name == "linucb" else v for v in experiment.variants)
    return replace(settings, experiments=(replace(experiment, variants=variants),))


def trained(dim: int, version: int) -> LinUCB:
    policy = LinUCB(dim, alpha=0.5)
    rng = np.random.default_rng(0)
    policy.update(rng.normal(size=(40, dim)), rng.random(40))
    policy.version = version
    return policy


def test_a_variant_starts_from_its_warm_start_snapshot(index_dir: Path, index: IndexArtifact, tmp_path: Path) -> None:
    settings = make_settings(index_dir, "", tmp_path / "logs")
    dim = feature_dim(index.dim, len(settings.experiments[0].context_keys))
    snapshot = tmp_path / "warm.npz"
    snapshot.write_bytes(trained(dim, 7).to_bytes())
    book = PolicyBook(with_variant(settings, warm_start=snapshot), index.dim)
    policy = book.get(EXPERIMENT, "linucb")
    assert policy.version == 7 and policy.to_bytes() == LinUCB.from_bytes(snapshot.read_bytes()).to_bytes()
    assert book.get(EXPERIMENT, "control").version == 0  # the other variant starts fresh
    (tmp_path / "narrow.npz").write_bytes(trained(dim - 1, 1).to_bytes())
    with pytest.raises(ValueError, match=r"variant 'linucb': warm_start: .*narrow.npz has \d+ features"):
        PolicyBook(with_variant(settings, warm_start=tmp_path / "narrow.npz"), index.dim)


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("missing.npz", "missing.npz: cannot load a policy snapshot"),
        ("other.npz", "other.npz holds a linucb policy, not epsilon_greedy"),
    ],
)
def test_a_bad_warm_start_file_is_refused_naming_it(tmp_path: Path, file: str, expected: str) -> None:
    (tmp_path / "other.npz").write_bytes(LinUCB(5).to_bytes())
    config = tmp_path / "scout.toml"
    config.write_text(
        '[[experiments]]\nname = "x"\nsalt = "s"\nsurfaces = ["home"]\ncandidates = 10\n'
        '[[experiments.variants]]\nname = "a"\npolicy = "epsilon_greedy"\nweight = 1.0\n'
        f'warm_start = "{tmp_path / file}"\n'
    )
    with pytest.raises(SettingsError) as info:
        load_settings(config, environ={})
    assert "experiments[0].variants[0].warm_start" in str(info.value) and expected in str(info.value)


def test_bumping_the_generation_resets_learning(
    index_dir: Path, index: IndexArtifact, clean_redis: str, tmp_path: Path
) -> None:
    settings = make_settings(index_dir, clean_redis, tmp_path / "logs")
    records = _decisions(settings, index, 40)
    reset = with_variant(settings, generation=1)

    async def scenario() -> dict[str, object]:
        store = Store(aioredis.Redis.from_url(clean_redis))
        base = int(time.time() * 1000)
        for k, record in enumerate(records):
            await store.record_decision(record, base + k, 0)
        await store.join_due(base + 10_000, 10_000, 60)
        old = Learner(store, lambda: PolicyBook(settings, index.dim), index, settings.learner, "l0", settings.limits)
        while old.applied + old.skipped < len(records):
            await old.step()
        old.close()
        learned = old.policies
        generation0 = int(await store.client.hget(store.policy_key(EXPERIMENT, "linucb"), "version"))
        control = int(await store.client.hget(store.policy_key(EXPERIMENT, "control"), "version"))
        # A server (or learner) configured with generation 1 ignores the generation-0 snapshot...
        fresh = PolicyBook(reset, index.dim)
        swapped = await refresh_policies(store, fresh)
        # ...and a config reload keeps a variant's learned state only while its generation is unchanged.
        reloaded, same = PolicyBook(reset, index.dim), PolicyBook(settings, index.dim)
        reloaded.carry_over(learned)
        same.carry_over(learned)
        # New decisions are learned into the new generation's key.
        for k, record in enumerate(_decisions(reset, index, 20)):
            await store.record_decision(record | {"event_id": f"new-{k}"}, base + k, 0)
        await store.join_due(int(time.time() * 1000) + 10_000, 10_000, 60)
        await store.client.delete(store.lease)
        new = Learner(store, lambda: PolicyBook(reset, index.dim), index, settings.learner, "l1", settings.limits)
        while new.applied + new.skipped < 20:
            await new.step()
        new.close()
        generation1 = int(await store.client.hget(store.policy_key(EXPERIMENT, "linucb", 1), "version"))
        after = int(await store.client.hget(store.policy_key(EXPERIMENT, "linucb"), "version"))
        await store.client.aclose()
        return {
            "generation0": generation0,
            "fresh_swapped": swapped,
            "fresh_version": fresh.get(EXPERIMENT, "linucb").version,
            "control_version": fresh.get(EXPERIMENT, "control").version,
            "control": control,
            "reloaded": reloaded.get(EXPERIMENT, "linucb").version,
            "same": same.get(EXPERIMENT, "linucb").version,
            "generation1": generation1,
            "generation0_after": after,
        }

    out = asyncio.run(scenario())
    assert out["generation0"] >= 1 and out["fresh_version"] == 0 and out["fresh_swapped"] == 1, out
    assert out["control"] >= 1 and out["control_version"] == out["control"], out  # control's generation: unchanged
    assert out["reloaded"] == 0 and out["same"] == out["generation0"], out
    assert out["generation1"] == 1 and out["generation0_after"] == out["generation0"], out


def test_snapshots_load_off_the_event_loop(
    index: IndexArtifact, index_dir: Path, clean_redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server swapping in a new snapshot inverts its matrix on a worker thread, never on the serving loop."""
    import threading

    import server.learner as learner_module

    settings = make_settings(index_dir, clean_redis, tmp_path / "logs")
    loaded_on: list[str] = []
    real = learner_module.load_policy

    def recording(state: bytes) -> object:
        loaded_on.append(threading.current_thread().name)
        return real(state)

    monkeypatch.setattr(learner_module, "load_policy", recording)

    async def scenario() -> tuple[int, int]:
        store = Store(aioredis.Redis.from_url(clean_redis))
        book = PolicyBook(settings, index.dim)
        dim = book.get(EXPERIMENT, "linucb").feature_dim
        newer = trained(dim, version=7)
        key = store.policy_key(EXPERIMENT, "linucb")
        await store.client.hset(key, mapping={"version": 7, "state": newer.to_bytes()})
        swapped = await refresh_policies(store, book)
        await store.client.aclose()
        return swapped, book.get(EXPERIMENT, "linucb").version

    loop_thread = threading.current_thread().name
    assert asyncio.run(scenario()) == (1, 7)
    assert loaded_on and loop_thread not in loaded_on, loaded_on
