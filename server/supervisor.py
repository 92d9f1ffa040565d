"""``scout serve --workers N``: N serving processes on one port (SO_REUSEPORT), one background process, one Redis.

The parent process serves nothing itself. It starts the embedded Redis when no ``redis_url`` is set (so every
process shares it), a ``scout worker`` process for the joiner, learner and exporter (unless ``--no-background``),
and N ``scout serve --no-background`` processes bound to the same port with ``SO_REUSEPORT``: the kernel spreads
new connections over them. Each serving process answers with the trailing metadata ``x-scout-worker`` (its index).
With a metrics port, each serving process serves its metrics on a port of its own and the parent serves the
configured one: every process's series, labelled by ``worker`` (:class:`server.metrics.WorkerMetrics`); the
background process's (its loops' health and counts) have ``worker="background"``.

SIGTERM or SIGINT to the parent is passed on to every child; each drains its in-flight requests and the worker
flushes its logs, as a single ``scout serve`` does. A child that exits unexpectedly is restarted after a short,
growing delay, and the restart is logged. A parent that dies without passing anything on (kill -9) takes its
children with it: each gets SIGTERM from the kernel (Linux ``PR_SET_PDEATHSIG``, set by the child at start from
``SCOUT_PARENT_PID``) and drains, so a restarted parent never shares its port with orphans it cannot see.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.metrics import serve_worker_metrics
from server.redis_server import PARENT_PID_ENV, RedisProcess
from server.settings import Settings

log = logging.getLogger(__name__)
WORKER_INDEX_ENV = "SCOUT_WORKER_INDEX"
#: The ``worker`` label of the background process's series in the parent's metrics.
BACKGROUND = "background"
MAX_RESTART_DELAY_S = 10.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_workers(
    settings: Settings,
    workers: int,
    config: Path | None,
    background: bool = True,
    log_args: tuple[str, ...] = (),
) -> int:
    """Supervise ``workers`` serving processes (and the background worker) until SIGTERM/SIGINT; returns 0."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    port = settings.server.port
    if port == 0:
        raise ValueError("--workers needs a fixed --port: each process binds the same one (SO_REUSEPORT)")
    redis_process = None
    env = dict(os.environ)
    if not settings.redis_url:
        redis_process = RedisProcess(
            settings.data_dir, appendfsync=settings.redis_appendfsync, maxmemory=settings.redis_maxmemory
        )
        env["SCOUT_REDIS_URL"] = redis_process.url
    env.update(SCOUT_INDEX=str(settings.index), SCOUT_HOST=settings.server.host, SCOUT_PORT=str(port))
    env["SCOUT_LOG_DIR"] = str(settings.export.log_dir)
    env[PARENT_PID_ENV] = str(os.getpid())
    metrics_ports: dict[str, int] = {}
    metrics_http = None
    if settings.server.metrics_port is not None:
        metrics_ports = {str(k): _free_port(settings.server.metrics_host) for k in range(workers)}
        if background:
            metrics_ports[BACKGROUND] = _free_port(settings.server.metrics_host)
        metrics_http = serve_worker_metrics(metrics_ports, settings.server.metrics_host, settings.server.metrics_port)
        log.info("metrics of every serving process on port %d", metrics_http.server_address[1])
    scout = [sys.executable, "-m", "server.cli", *log_args]
    common = ["--config", str(config)] if config is not None else []
    serve = [*scout, "serve", *common, "--no-background", "--reuse-port"]
    children = [_Child(f"serve-{k}", serve, env | {WORKER_INDEX_ENV: str(k)}) for k in range(workers)]
    for k in range(workers):
        if str(k) in metrics_ports:
            children[k].env["SCOUT_METRICS_PORT"] = str(metrics_ports[str(k)])
    if background:
        metrics = ["--metrics-port", str(metrics_ports[BACKGROUND])] if BACKGROUND in metrics_ports else []
        children.append(_Child("worker", [*scout, "worker", *common, *metrics], env))
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        log.info("%d serving processes on %s:%d%s", workers, settings.server.host, port, " + worker" * background)
        while not stopping:
            time.sleep(0.2)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                delay = min(MAX_RESTART_DELAY_S, 0.5 * 2**child.restarts)
                if time.monotonic() - child.started_at > 60:
                    child.restarts, delay = 0, 0.5  # it ran a while: not a crash loop
                log.error("%s exited with %s; restarting in %.1f s", child.name, code, delay)
                time.sleep(delay)
                child.restarts += 1
                child.start()
    finally:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop within 60 s; killing it", child.name)
                    child.process.kill()
        if redis_process is not None:
            redis_process.stop()
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("all serving processes stopped")
    return 0
