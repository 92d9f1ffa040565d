"""Background work (joiner, learner, exporters) as supervised loops, in a server or in its own process.

``scout serve`` runs them next to the gRPC server by default; ``scout worker`` runs any of them alone against a
shared Redis (``SCOUT_REDIS_URL``). Any number of each may run over one Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from embeddings.index import IndexArtifact
from server.config_reloader import ConfigReloader
from server.exporter import Exporter, decision_dataset, late_dataset
from server.indexes import IndexVersions, versions_root
from server.joiner import Joiner
from server.learner import Learner
from server.loops import Loop, freeze_heap, process_identity
from server.recommender import PolicyBook
from server.settings import Settings
from server.store import Store, settings_store

log = logging.getLogger(__name__)
ROLES = ("joiner", "learner", "exporter")


@dataclass(eq=False)  # hashed by identity: a Prometheus registry keeps it as a collector
class Background:
    """The background loops of one process and the objects they drive."""

    loops: list[Loop] = field(default_factory=list)
    joiner: Joiner | None = None
    learner: Learner | None = None
    exporters: list[Exporter] = field(default_factory=list)  # joined decisions, one per shard
    late_exporters: list[Exporter] = field(default_factory=list)  # late rewards, one per shard

    @property
    def exported(self) -> int:
        """Decisions this process has exported."""
        return sum(e.exported for e in self.exporters)

    def collect(self) -> Iterator[Metric]:
        """Prometheus families of these loops (a collector: register it in a ``CollectorRegistry``)."""
        up = GaugeMetricFamily("scout_loop_up", "Whether a background loop's last step succeeded", labels=["loop"])
        for loop in self.loops:
            up.add_metric([loop.name], float(loop.healthy))
        yield up
        counts = {
            "exported": ("Entries written to Parquet files", lambda e: e.exported),
            "export_claimed": ("Entries of exporters presumed dead, taken over or found written", lambda e: e.claimed),
            "export_dropped": ("Stream entries that did not parse, acknowledged without a row", lambda e: e.dropped),
        }
        for name, (text, value) in counts.items():
            family = CounterMetricFamily(f"scout_{name}", text, labels=["dataset"])
            for dataset, exporters in (("decisions", self.exporters), ("late", self.late_exporters)):
                if exporters:
                    family.add_metric([dataset], float(sum(value(e) for e in exporters)))
            yield family
        if self.joiner is not None:
            yield CounterMetricFamily("scout_joined", "Decisions joined with their rewards", value=self.joiner.joined)
        if self.learner is not None:
            learned = CounterMetricFamily(
                "scout_learner_entries", "Joined decisions the learner read", labels=["outcome"]
            )
            learned.add_metric(["applied"], float(self.learner.applied))
            learned.add_metric(["skipped"], float(self.learner.skipped))
            yield learned

    async def wait(self) -> None:
        """Wait for every loop to end (after their stop event is set)."""
        await asyncio.gather(*(loop.task for loop in self.loops if loop.task is not None), return_exceptions=True)
        if self.learner is not None:
            self.learner.close()


def start_background(
    store: Store,
    settings: Settings,
    index: IndexArtifact | IndexVersions,
    stop: asyncio.Event,
    roles: tuple[str, ...] = ROLES,
    identity: str | None = None,
) -> Background:
    """Start the loops for ``roles`` on the running event loop; they end when ``stop`` is set."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown background roles {sorted(unknown)}; known: {list(ROLES)}")
    name = identity or process_identity()
    versions = index if isinstance(index, IndexVersions) else IndexVersions(index, versions_root(settings.index))
    dim = versions.current.dim
    bg = Background()
    if "joiner" in roles:
        bg.joiner = Joiner(store, settings.join)
        bg.loops.append(Loop("joiner", bg.joiner.step, stop))
    if "learner" in roles:
        bg.learner = Learner(
            store, lambda: PolicyBook(settings, dim), versions, settings.learner, name, settings.limits
        )
        bg.loops.append(Loop("learner", bg.learner.step, stop))
    if "exporter" in roles:
        for shard in range(store.shards):
            suffix = "" if store.shards == 1 else f"-s{shard}"
            exporter = Exporter(store, settings.export, name, decision_dataset(store, settings.export, shard))
            late = Exporter(store, settings.export, name, late_dataset(store, settings.export, shard))
            bg.exporters.append(exporter)
            bg.late_exporters.append(late)
            bg.loops.append(Loop(f"exporter{suffix}", exporter.step, stop, final=exporter.final))
            bg.loops.append(Loop(f"late-exporter{suffix}", late.step, stop, final=late.final))
    for loop in bg.loops:
        loop.start()
    freeze_heap()  # the index lives as long as the process
    log.info("background %s started as %s", ", ".join(roles), name)
    return bg


async def run_worker(
    settings: Settings,
    roles: tuple[str, ...],
    stop: asyncio.Event,
    config: tuple[Path, Callable[[], Settings]] | None = None,
    metrics_port: int | None = None,
) -> Background:
    """Run background loops in this process until ``stop`` is set (``scout worker``); needs a shared Redis.

    With ``config`` (the ``--config`` file and its loader), the learner follows reloads of the experiments. With
    ``metrics_port``, the loops' metrics (:meth:`Background.collect`) are served there, on
    ``server.metrics_host``.
    """
    if not settings.redis_url:
        raise ValueError(
            "scout worker needs a shared Redis: set redis_url in the config or SCOUT_REDIS_URL "
            "(the embedded Redis belongs to the scout serve that started it)"
        )
    index = IndexArtifact.load(settings.index)
    store = settings_store(settings, settings.redis_url)
    await store.positions()  # a learner position of another shard count fails here, saying so
    bg = start_background(store, settings, index, stop, roles)
    if config is not None and bg.learner is not None:
        learner, dim = bg.learner, index.dim

        async def follow(new: Settings) -> None:
            learner.reconfigure(lambda: PolicyBook(new, dim))

        watcher = ConfigReloader(config[0], config[1], settings, follow)
        bg.loops.append(Loop("config-watch", watcher.step, stop))
        bg.loops[-1].start()
    http = None
    if metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(bg)
        http, _thread = start_http_server(metrics_port, addr=settings.server.metrics_host, registry=registry)
        log.info("metrics of the background loops on port %d", http.server_address[1])
    try:
        await stop.wait()
        log.info("stopping: finishing the background loops' current steps and flushing the exporters")
        await bg.wait()
    finally:
        await store.client.aclose()
        if http is not None:
            http.shutdown()
            http.server_close()
    log.info("background %s stopped", ", ".join(roles))
    return bg
