"""``scout demo``: the whole loop on a synthetic world, ending with an offline estimate next to the truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
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
from offline_eval.report import flag_lines, format_estimates
from offline_eval.summary import Evaluation
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld, WorldConfig, item_index, user_index
from server.app import ScoutServer, start_server
from server.pb import scout_pb2, scout_pb2_grpc
from server.settings import Settings, load_settings

log = logging.getLogger(__name__)
SURFACE = "home"
SLATE = 5
TARGET_PARAMS: dict[str, float] = {"temperature": 0.025}
# What the demo writes under its directory (and clears at its start; anything else there makes it refuse).
OUTPUTS = frozenset({"catalog.parquet", "index", "redis", "logs", "late", "target.npz"})
# Per-event and per-flush INFO lines of these packages would scroll over the progress bars.
QUIET_LOGGERS = ("server", "embeddings", "bandits", "offline_eval", "faiss")


@dataclass(frozen=True)
class DemoConfig:
    """Where and how big the demo runs.

    ``reward_window_s`` is long enough for a loaded machine; a reward that still arrives after it is counted as
    late (and reported), never an error. ``click_delay_s`` is how long a simulated user takes to click.
    """

    directory: Path
    decisions: int = 20000
    items: int = 20000
    concurrency: int = 8
    seed: int = 0
    reward_window_s: float = 5.0
    click_delay_s: float = 0.0

    def __post_init__(self) -> None:
        for name, low in (("decisions", 2), ("items", 1), ("concurrency", 1), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not (self.reward_window_s > 0 and self.click_delay_s >= 0):
            raise ValueError("reward_window_s must be positive and click_delay_s not negative")


@dataclass(frozen=True)
class Traffic:
    """What the simulated users did: clicks, late clicks, and the event ids of the decisions they were served."""

    clicks: int
    late: int
    event_ids: frozenset[str]


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Raise the library loggers to WARNING for the demo's duration, unless the root logger is at DEBUG."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass(frozen=True)
class Outcome:
    """The demo's offline evaluation: the target's estimates on the held-out decisions, and the truth."""

    evaluation: Evaluation
    truth: float
    target_version: int
    logged_value: float
    seconds: float


async def run_demo(config: DemoConfig) -> int:
    """Run the demo; returns a process exit code."""
    with quiet_logs():
        return 0 if await demo(config) is not None else 1


async def demo(config: DemoConfig) -> Outcome | None:
    """Run the demo, printing its progress and results; None when there was nothing to evaluate."""
    started = time.perf_counter()
    root = config.directory
    _clear(root)
    world = demo_world(config)
    write_catalog(world.catalog, root / "catalog.parquet")
    artifact = build_artifact(world.catalog, EncoderConfig(seed=config.seed), progress=True)
    artifact.save(root / "index")
    print(
        f"1. world: {len(world.catalog)} items by {world.config.num_creators} creators, "
        f"{world.config.num_users} users; index {artifact.version}"
    )

    settings = _settings(root, config)
    experiment = settings.experiments[0]
    server = await start_server(settings)
    print(
        f"2. serving on port {server.port} with an embedded Redis; experiment variants: "
        f"{', '.join(v.name + ' (' + v.policy + ')' for v in experiment.variants)}"
    )
    half = config.decisions // 2
    try:
        with tqdm(total=config.decisions, desc="simulated users", unit="req") as progress:
            first = await _drive(world, server.port, config, range(half), progress)
            # The target: what the control variant has learned so far. The decisions from here on are new to it.
            snapshot = await _learned_snapshot(server, experiment.name, "control", timeout_s=60.0)
            await asyncio.sleep(0.002)  # decisions are stamped in ms: the halves' stamps do not meet
            second = await _drive(world, server.port, config, range(half, config.decisions), progress)
        clicks, late = first.clicks + second.clicks, first.late + second.late
        print(
            f"3. {config.decisions} decisions served, {clicks} clicks rewarded, {late} of them late "
            f"(after the {config.reward_window_s:g} s reward window: kept apart, not joined)"
        )
        await _wait_for_export(server, config.decisions, timeout_s=60.0 + 4 * config.reward_window_s)
    finally:
        await server.stop()
    log_data = read_logs(settings.export.log_dir)
    print(f"4. joined log: {len(log_data)} decisions in {settings.export.log_dir} (Parquet)")

    later = np.array([e in second.event_ids for e in log_data["event_id"]])
    held_out = log_data.where(later & (np.array(log_data["variant"]) == "control"))
    if len(held_out) == 0:
        print(f"no decisions of the control variant after request {half}: nothing to evaluate (raise --decisions)")
        return None
    # For `scout evaluate --since`: every decision of the second half was made after those of the first.
    since_ms = int(log_data.where(later).decided_ms().min())
    index = IndexArtifact.load(root / "index")
    served = load_policy(snapshot)
    served_params = served.params()
    if set(TARGET_PARAMS) - set(served_params):
        raise RuntimeError(f"the demo's target sets {sorted(TARGET_PARAMS)}, which a {served.name} policy lacks")
    target = load_policy(snapshot, TARGET_PARAMS)
    (root / "target.npz").write_bytes(target.to_bytes())
    result = evaluate(held_out, index, target, seed=config.seed)
    truth = true_value(world, held_out, index, target, seed=config.seed)
    logged = float(np.mean([sum(r) for r in held_out["rewards"]]))
    change = ", ".join(f"{k} {v:g} instead of {served_params[k]:g}" for k, v in TARGET_PARAMS.items())
    print(
        f"5. offline evaluation of a policy that was never served: the control variant's model as it stood after "
        f"the first {half} requests (version {target.version}), with {change},\n"
        f"   estimated from the {len(held_out)} decisions the control variant logged after it "
        f"(whose own average reward was {logged:.4f}):\n"
    )
    print(format_estimates(result.estimates, truth))
    for line in flag_lines(result.estimates):
        print(line)
    for warning in result.diagnostics.warnings:
        print(f"warning: {warning}")
    inside = [e.estimator for e in result.estimates if e.lower <= truth <= e.upper]
    print(f"\nthe true value lies inside the interval of: {', '.join(inside) or 'none'}")
    print(
        f"reproduce: scout evaluate --logs {settings.export.log_dir} --index {root / 'index'} "
        f"--snapshot {root / 'target.npz'} --variant control --since {since_ms}"
    )
    seconds = time.perf_counter() - started
    print(f"demo finished in {seconds:.0f} s")
    return Outcome(result, truth, target.version, logged, seconds)


def _clear(root: Path) -> None:
    """Remove what an earlier demo wrote under ``root``; refuse a directory that holds anything else."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    strangers = sorted(p.name for p in root.iterdir() if p.name not in OUTPUTS)
    if strangers:
        raise ValueError(
            f"{root}: holds {', '.join(strangers[:3])}, which the demo did not write; "
            "the demo starts by clearing its directory, so give it a new or empty one"
        )
    for name in OUTPUTS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _settings(root: Path, config: DemoConfig) -> Settings:
    settings = load_settings(environ={})
    return replace(
        settings,
        index=root / "index",
        data_dir=root / "redis",
        server=replace(
            settings.server,
            port=0,
            refresh_interval_s=0.5,
            event_id_seed=config.seed,
            max_in_flight=max(settings.server.max_in_flight, config.concurrency),  # every user's call is taken
        ),
        join=replace(settings.join, reward_window_s=config.reward_window_s, poll_interval_s=0.1),
        export=replace(settings.export, log_dir=root / "logs", flush_interval_s=1.0),
    )


def demo_world(config: DemoConfig) -> SyntheticWorld:
    """The synthetic world the demo serves and simulates."""
    return SyntheticWorld(
        WorldConfig(num_items=config.items, num_creators=max(1, config.items // 20), seed=config.seed)
    )


def simulated_rng(config: DemoConfig, request: int) -> np.random.Generator:
    """The generator of simulated request number ``request``: its user, context, seeds and clicks."""
    return np.random.default_rng([config.seed, request])


async def _drive(world: SyntheticWorld, port: int, config: DemoConfig, requests: range, progress: tqdm) -> Traffic:
    """Simulated users send ``requests`` (numbers): Recommend, then a Reward for every clicked item.

    Request ``i`` is drawn from its own generator (the users take turns), so the requests do not depend on
    timing. A reward after the window (FAILED_PRECONDITION, or accepted with ``late`` set) is counted.
    """
    clicks = late = 0
    event_ids: set[str] = set()

    async def user(stub: scout_pb2_grpc.RecommenderStub, worker: int) -> None:
        nonlocal clicks, late
        for i in requests[worker :: config.concurrency]:
            rng = simulated_rng(config, i)
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
            event_ids.add(reply.event_id)
            served = item_index([item.item_id for item in reply.items])
            context = np.array([request.context[k] for k in CONTEXT_KEYS])
            chosen = world.sample_clicks(rng, request.user, served, context)
            if config.click_delay_s and chosen.any():
                await asyncio.sleep(config.click_delay_s)
            for item, click in zip(reply.items, chosen, strict=True):
                if click:
                    was_late = await _reward(stub, reply.event_id, item.item_id)
                    clicks, late = clicks + 1, late + was_late  # after the await: `late += await ...` loses counts
            progress.update()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = scout_pb2_grpc.RecommenderStub(channel)
        await asyncio.gather(*(user(stub, w) for w in range(config.concurrency)))
    return Traffic(clicks, late, frozenset(event_ids))


async def _reward(stub: scout_pb2_grpc.RecommenderStub, event_id: str, item_id: str) -> bool:
    """Send one click; True when it arrived after the reward window."""
    try:
        reply = await stub.Reward(scout_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=1.0))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # servers that refuse late rewards
            return True
        raise
    return bool(getattr(reply, "late", False))


async def _wait_for_export(server: ScoutServer, expected: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected, desc="waiting for reward windows and joins", unit="dec") as bar:
        while server.exported < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {server.exported} of {expected} decisions exported")
            bar.update(server.exported - bar.n)
            await asyncio.sleep(0.2)
        bar.update(expected - bar.n)


async def _learned_snapshot(server: ScoutServer, experiment: str, variant: str, timeout_s: float) -> bytes:
    """The variant's snapshot once the learner has applied every joined decision (or ``timeout_s`` has passed).

    On a busy machine the learner may still be behind when the export is complete; without any published
    snapshot the policy being served (the initial one) is the target's starting point.
    """
    store = server.store
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await store.learner_caught_up():
            break
        await asyncio.sleep(0.2)
    else:
        log.warning("the learner had not caught up after %.0f s; evaluating its latest snapshot", timeout_s)
    state: Any = await store.client.hget(store.policy_key(experiment, variant), "state")
    return bytes(state) if state else server.service.recommender.policies.get(experiment, variant).to_bytes()


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
