"""``scout demo``: the whole loop on a synthetic world, ending with an offline estimate next to the truth."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from bandits.base import Policy
from bandits.registry import load_policy
from embeddings.builder import build_artifact
from embeddings.catalog import write_catalog
from embeddings.encoder import EncoderConfig
from embeddings.index import IndexArtifact
from offline_eval.evaluation import evaluate
from offline_eval.logs import DecisionLog, read_logs
from offline_eval.replay import decisions
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld, WorldConfig, item_index, user_index
from server.app import ScoutServer, start_server
from server.pb import scout_pb2, scout_pb2_grpc
from server.settings import Settings, load_settings

log = logging.getLogger(__name__)
SURFACE = "home"
SLATE = 5
TARGET_EPSILON = 0.05


@dataclass(frozen=True)
class DemoConfig:
    """Where and how big the demo runs."""

    directory: Path
    decisions: int = 20000
    items: int = 20000
    concurrency: int = 8
    seed: int = 0


async def run_demo(config: DemoConfig) -> int:
    """Run the demo; returns a process exit code."""
    started = time.perf_counter()
    root = config.directory
    shutil.rmtree(root, ignore_errors=True)
    world = SyntheticWorld(
        WorldConfig(num_items=config.items, num_creators=max(1, config.items // 20), seed=config.seed)
    )
    write_catalog(world.catalog, root / "catalog.parquet")
    artifact = build_artifact(world.catalog, EncoderConfig(seed=config.seed), progress=True)
    artifact.save(root / "index")
    print(
        f"1. world: {len(world.catalog)} items by {world.config.num_creators} creators, "
        f"{world.config.num_users} users; index {artifact.version}"
    )

    settings = _settings(root)
    server = await start_server(settings)
    print(
        f"2. serving on port {server.port} with an embedded Redis; experiment variants: "
        f"{', '.join(v.name + ' (' + v.policy + ')' for v in settings.experiments[0].variants)}"
    )
    try:
        clicks = await _drive(world, server.port, config)
        print(f"3. {config.decisions} decisions served, {clicks} clicks rewarded")
        await _wait_for_export(server, config.decisions)
        snapshot: Any = await server.store.client.hget(
            server.store.policy_key(settings.experiments[0].name, "control"), "state"
        )
    finally:
        await server.stop()
    log_data = read_logs(settings.export.log_dir)
    print(f"4. joined log: {len(log_data)} decisions in {settings.export.log_dir} (Parquet)")

    control = log_data.where(np.array(log_data["variant"]) == "control")
    index = IndexArtifact.load(root / "index")
    target = load_policy(snapshot or b"", {"epsilon": TARGET_EPSILON})
    (root / "target.npz").write_bytes(target.to_bytes())
    result = evaluate(control, index, target, seed=config.seed)
    truth = true_value(world, control, index, target, seed=config.seed)
    logged = float(np.mean([sum(r) for r in control["rewards"]]))
    print(
        f"5. offline evaluation of a policy that was never served: the control variant's learned model "
        f"(version {target.version}) with epsilon {TARGET_EPSILON} instead of 0.3,\n"
        f"   estimated from the {len(control)} decisions logged by the control variant "
        f"(whose own average reward was {logged:.4f}):\n"
    )
    from server.cli import format_estimates

    print(format_estimates(result.estimates, truth))
    for warning in result.diagnostics.warnings:
        print(f"warning: {warning}")
    inside = [e.estimator for e in result.estimates if e.lower <= truth <= e.upper]
    print(f"\nthe true value lies inside the interval of: {', '.join(inside) or 'none'}")
    print(
        f"reproduce: scout evaluate --logs {settings.export.log_dir} --index {root / 'index'} "
        f"--snapshot {root / 'target.npz'} --variant control"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _settings(root: Path) -> Settings:
    settings = load_settings(environ={})
    return replace(
        settings,
        index=root / "index",
        data_dir=root / "redis",
        server=replace(settings.server, port=0, refresh_interval_s=0.5),
        join=replace(settings.join, reward_window_s=1.0, poll_interval_s=0.1),
        export=replace(settings.export, log_dir=root / "logs", flush_interval_s=1.0),
    )


async def _drive(world: SyntheticWorld, port: int, config: DemoConfig) -> int:
    """Simulated users: Recommend, then a Reward for every clicked item."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(config.decisions):
        queue.put_nowait(i)
    clicks = 0
    progress = tqdm(total=config.decisions, desc="simulated users", unit="req")

    async def user(stub: scout_pb2_grpc.RecommenderStub, worker: int) -> None:
        nonlocal clicks
        rng = np.random.default_rng([config.seed, worker])
        while not queue.empty():
            queue.get_nowait()
            request = world.sample_request(rng)
            reply = await stub.Recommend(
                scout_pb2.RecommendRequest(
                    unit_id=request.unit_id,
                    surface=SURFACE,
                    num_items=SLATE,
                    context=request.context,
                    seed_item_ids=request.seed_item_ids,
                )
            )
            served = item_index([item.item_id for item in reply.items])
            context = np.array([request.context[k] for k in CONTEXT_KEYS])
            for item, click in zip(reply.items, world.sample_clicks(rng, request.user, served, context), strict=True):
                if click:
                    await stub.Reward(scout_pb2.RewardRequest(event_id=reply.event_id, item_id=item.item_id, value=1.0))
                    clicks += 1
            progress.update()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = scout_pb2_grpc.RecommenderStub(channel)
        await asyncio.gather(*(user(stub, w) for w in range(config.concurrency)))
    progress.close()
    return clicks


async def _wait_for_export(server: ScoutServer, expected: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected, desc="waiting for reward windows and joins", unit="dec") as bar:
        while server.exporter is not None and server.exporter.exported < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {server.exporter.exported} of {expected} decisions exported")
            bar.update(server.exporter.exported - bar.n)
            await asyncio.sleep(0.2)
        bar.update(expected - bar.n)


def true_value(world: SyntheticWorld, log_data: DecisionLog, index: IndexArtifact, target: Policy, seed: int) -> float:
    """The world's expected slate reward of ``target`` on the logged requests (users, contexts, candidates)."""
    rng = np.random.default_rng(seed)
    values = []
    for d in decisions(log_data, index):
        items = item_index(index.item_ids[d.candidate_positions].tolist())
        values.append(
            world.expected_slate_reward(
                target, d.candidates, user_index(d.unit_id), items, d.context, len(d.served), rng, samples=4
            )
        )
    return float(np.mean(values))
