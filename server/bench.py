"""Load generator (``scout bench``): Recommend/Reward load against Scout and, in the same run, a bare gRPC echo.

The echo is the floor: a ``scout.v1.Recommender`` server in its own process, built the same way as Scout's
(``grpc.aio``, one process, or as many as Scout's serving processes sharing one port), that parses each request and
answers a canned response of exactly the size Scout answered. Comparing Scout with it in the same run, on the
same machine and under the same load, gives ratios that survive a busy machine better than absolute times do.

Two ways to drive load, both with warm-up and a fixed duration:

- closed loop (``concurrency``): N callers, each sending its next request when the previous one answered;
- open loop (``rate``): requests sent on a fixed schedule whatever the answers; latency is measured from each
  request's *intended* send time, so a stalled server is charged for the requests it delayed (no coordinated
  omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.pb import scout_pb2, scout_pb2_grpc

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: Most client channels (TCP connections) one load run opens.
MAX_CHANNELS = 256
#: An open loop whose p99 send lag exceeds this (ms) did not keep its schedule; the table adds a note.
SEND_LAG_WARN_MS = 10.0


@dataclass(frozen=True)
class LoadSpec:
    """What load to send.

    Parameters
    ----------
    concurrency
        Closed loop: callers in flight (ignored when ``rate`` is set).
    rate
        Open loop: requests per second on a fixed schedule; None for closed loop.
    duration_s, warmup_s
        Measured seconds, after ``warmup_s`` seconds whose requests are sent but not counted.
    reward_share
        Rewards sent per Recommend (0..1), each for the first item of a served slate, right after it.
    num_items, surface, context_keys, seeds_per_request
        Shape of the Recommend requests; seed items are drawn from the catalog.
    seed
        Seed of the request mix.
    token
        Bearer token sent as ``authorization`` metadata, if the server wants one.
    timeout_s
        Deadline of each call.
    channels
        Client channels, each its own TCP connection, that the callers (or the open loop's requests) take in turn;
        in a closed loop, channels beyond ``concurrency`` stay idle. A server of several processes sharing a port
        (``scout serve --workers``, ``SO_REUSEPORT``) gets each connection in one process, so it needs several to
        spread the load.
    """

    concurrency: int = 1
    rate: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    reward_share: float = 0.0
    num_items: int = 10
    surface: str = "home"
    context_keys: tuple[str, ...] = ("mobile", "evening")
    seeds_per_request: int = 3
    seed: int = 0
    token: str | None = None
    timeout_s: float = 5.0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be in 1..{MAX_CHANNELS}, got {self.channels}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of requests per second, got {self.rate}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError(f"duration_s must be > 0 and warmup_s >= 0, got {self.duration_s}, {self.warmup_s}")
        if not 0.0 <= self.reward_share <= 1.0:
            raise ValueError(f"reward_share must be in 0..1, got {self.reward_share}")
        if self.num_items < 1 or self.seeds_per_request < 0 or self.timeout_s <= 0:
            raise ValueError("num_items must be >= 1, seeds_per_request >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class LoadReport:
    """What one load run measured (latencies in milliseconds)."""

    target: str
    mode: str
    concurrency: int
    rate: float | None
    duration_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    throughput: float
    latency_ms: dict[str, float]
    rewards: int
    reward_errors: dict[str, int]
    server_cpu_s_per_request: float | None
    #: CPU seconds per request of the background process (``scout worker``: joiner, learner, exporter), if known.
    background_cpu_s_per_request: float | None = None
    #: Open loop: OK responses per second from the first measured request's due time to the last one's answer
    #: (``throughput`` counts them by due time, so it is the offered load a server that keeps up serves).
    served_per_s: float | None = None
    #: The 1-minute load average when the run started and when it ended.
    load_average: tuple[float, float] | None = None
    #: Open loop: how late the load generator sent requests after their due times (p50, p99, max, in ms). Past
    #: :data:`SEND_LAG_WARN_MS` it could not keep its schedule, and the table says so (see :func:`table`).
    send_lag_ms: dict[str, float] | None = None
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The report without the raw latencies."""
        out = asdict(self)
        del out["latencies_ms"]
        return out


def catalog_item_ids(index: Path) -> list[str]:
    """The item ids of an index artifact (or of the version a versions root's ``CURRENT`` names)."""
    current = index / "CURRENT"
    if current.exists():
        index = index / current.read_text().strip()
    path = index / "items.parquet"
    try:
        return [str(i) for i in pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()]
    except (OSError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read item_id ({exc})") from exc


def requests_for(spec: LoadSpec, item_ids: Sequence[str], count: int = 2048) -> list[scout_pb2.RecommendRequest]:
    """A seeded pool of ``count`` Recommend requests (units drawn from 10,000), seed items drawn from ``item_ids``."""
    rng = np.random.default_rng(spec.seed)
    out = []
    for _ in range(count):
        seeds = [item_ids[int(i)] for i in rng.integers(0, len(item_ids), spec.seeds_per_request)]
        context = {key: float(rng.integers(0, 2)) for key in spec.context_keys}
        out.append(
            scout_pb2.RecommendRequest(
                unit_id=f"bench-{int(rng.integers(0, 10_000)):05d}",
                surface=spec.surface,
                num_items=spec.num_items,
                context=context,
                seed_item_ids=seeds,
            )
        )
    return out


def _percentiles(latencies: np.ndarray) -> dict[str, float]:
    if latencies.size == 0:
        return {f"p{p:g}": float("nan") for p in PERCENTILES} | {"mean": float("nan")}
    values = np.percentile(latencies, PERCENTILES)
    return {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, values, strict=True)} | {"mean": float(latencies.mean())}


class _Recorder:
    def __init__(self, measure_from: float, measure_to: float) -> None:
        self.measure_from, self.measure_to = measure_from, measure_to
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.reward_codes: Counter[str] = Counter()
        self.last_done = measure_from
        self.send_lags: list[float] = []

    def counts(self, started: float) -> bool:
        return self.measure_from <= started < self.measure_to


async def _call(
    stub: scout_pb2_grpc.RecommenderStub,
    request: scout_pb2.RecommendRequest,
    spec: LoadSpec,
    metadata: tuple[tuple[str, str], ...],
    recorder: _Recorder,
    intended: float,
    reward: bool,
) -> None:
    code = "OK"
    reply = None
    if recorder.counts(intended):
        recorder.send_lags.append((time.perf_counter() - intended) * 1000.0)
    try:
        reply = await stub.Recommend(request, timeout=spec.timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    done = time.perf_counter()
    counted = recorder.counts(intended)
    if counted:
        recorder.codes[code] += 1
        recorder.last_done = max(recorder.last_done, done)
        if code == "OK":
            recorder.latencies.append((done - intended) * 1000.0)
    if reward and reply is not None and reply.items:
        reward_code = "OK"
        try:
            await stub.Reward(
                scout_pb2.RewardRequest(event_id=reply.event_id, item_id=reply.items[0].item_id, value=1.0),
                timeout=spec.timeout_s,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            reward_code = exc.code().name
        if counted:
            recorder.reward_codes[reward_code] += 1


def _lag_summary(lags: Sequence[float]) -> dict[str, float]:
    p50, p99 = np.percentile(lags, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(max(lags))}


def _cpu_seconds(pids: Sequence[int]) -> float | None:
    """CPU seconds used so far by all of ``pids``; None when there are none or one cannot be read."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        total += times.user + times.system
    return total if pids else None


async def run_load(
    target: str,
    spec: LoadSpec,
    item_ids: Sequence[str],
    server_pids: Sequence[int] = (),
    progress: Callable[[float], None] | None = None,
    background_pid: int | None = None,
) -> LoadReport:
    """Send ``spec``'s load to ``target`` and measure it; ``server_pids`` add the serving processes' CPU per request.

    ``background_pid`` (the ``scout worker`` process) adds its CPU per request too.

    ``progress`` is called about ten times a second with the fraction of the run done.
    """
    pool = requests_for(spec, item_ids)
    rng = np.random.default_rng(spec.seed + 1)
    rewarded = rng.random(len(pool)) < spec.reward_share
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    # a local subchannel pool per channel: channels to one target would otherwise share one connection
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target, options=options))
            for _ in range(spec.channels)
        ]
        stubs = [scout_pb2_grpc.RecommenderStub(channel) for channel in channels]
        await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), timeout=30)
        load_start = os.getloadavg()[0]
        start = time.perf_counter()
        recorder = _Recorder(start + spec.warmup_s, start + spec.warmup_s + spec.duration_s)
        end = recorder.measure_to
        cpu: dict[str, tuple[float | None, float | None]] = {}

        async def mark_cpu() -> None:
            await asyncio.sleep(max(0.0, recorder.measure_from - time.perf_counter()))
            background = () if background_pid is None else (background_pid,)
            cpu["from"] = (_cpu_seconds(server_pids), _cpu_seconds(background))
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            cpu["to"] = (_cpu_seconds(server_pids), _cpu_seconds(background))

        async def report_progress() -> None:
            while time.perf_counter() < end:
                if progress is not None:
                    progress(min(1.0, (time.perf_counter() - start) / (end - start)))
                await asyncio.sleep(0.1)

        helpers = [asyncio.create_task(mark_cpu()), asyncio.create_task(report_progress())]
        if spec.rate is None:

            async def caller(offset: int) -> None:
                k, stub = offset, stubs[offset % len(stubs)]
                while (now := time.perf_counter()) < end:
                    i = k % len(pool)
                    await _call(stub, pool[i], spec, metadata, recorder, now, bool(rewarded[i]))
                    k += spec.concurrency

            await asyncio.gather(*(caller(c) for c in range(spec.concurrency)))
        else:
            in_flight: set[asyncio.Task[None]] = set()
            k = 0
            while (intended := start + k / spec.rate) < end:
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                i = k % len(pool)
                stub = stubs[k % len(stubs)]
                task = asyncio.create_task(_call(stub, pool[i], spec, metadata, recorder, intended, bool(rewarded[i])))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                k += 1
            await asyncio.gather(*in_flight)
        await asyncio.gather(*helpers)
    latencies = np.asarray(recorder.latencies)
    requests = sum(recorder.codes.values())
    ok = recorder.codes.get("OK", 0)
    served = None if spec.rate is None else ok / max(spec.duration_s, recorder.last_done - recorder.measure_from)
    used: list[float | None] = [None, None]  # server, background
    for k in (0, 1):
        before, after = cpu.get("from", (None, None))[k], cpu.get("to", (None, None))[k]
        if before is not None and after is not None and requests:
            used[k] = (after - before) / requests
    return LoadReport(
        target=target,
        mode="closed" if spec.rate is None else "open",
        concurrency=spec.concurrency,
        rate=spec.rate,
        duration_s=spec.duration_s,
        requests=requests,
        ok=recorder.codes.get("OK", 0),
        errors={code: n for code, n in recorder.codes.items() if code != "OK"},
        throughput=ok / spec.duration_s,
        latency_ms=_percentiles(latencies),
        rewards=sum(recorder.reward_codes.values()),
        reward_errors={code: n for code, n in recorder.reward_codes.items() if code != "OK"},
        server_cpu_s_per_request=used[0],
        background_cpu_s_per_request=used[1],
        served_per_s=served,
        load_average=(load_start, os.getloadavg()[0]),
        send_lag_ms=_lag_summary(recorder.send_lags) if spec.rate is not None and recorder.send_lags else None,
        latencies_ms=recorder.latencies,
    )


# --- the echo floor ------------------------------------------------------------------------------------------


class EchoService(scout_pb2_grpc.RecommenderServicer):
    """Answers every Recommend with one canned response (parsed once) and every Reward with ``accepted``."""

    def __init__(self, response: scout_pb2.RecommendResponse) -> None:
        self.response = response

    async def Recommend(self, request: Any, context: Any) -> scout_pb2.RecommendResponse:  # noqa: N802
        """The canned response."""
        return self.response

    async def Reward(self, request: Any, context: Any) -> scout_pb2.RewardResponse:  # noqa: N802
        """Accepted."""
        return scout_pb2.RewardResponse(accepted=True)


async def serve_echo(response: bytes, port: int) -> None:
    """Serve the echo on 127.0.0.1:``port`` until cancelled (the process is killed by its parent).

    The port is bound with ``SO_REUSEPORT``, so that several echo processes share it as Scout's do.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    scout_pb2_grpc.add_RecommenderServicer_to_server(
        EchoService(scout_pb2.RecommendResponse.FromString(response)), server
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise RuntimeError(f"echo: cannot listen on 127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def echo_process(response: bytes, workers: int = 1) -> Any:
    """Run the echo server in ``workers`` processes sharing one port; yields ``(target, pids)``."""
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(response)
    port = free_port()
    processes = []
    try:
        for _ in range(workers):
            processes.append(subprocess.Popen([sys.executable, "-m", "server.bench", f.name, str(port)]))
        wait_listening(processes, port, timeout_s=30)
        wait_serving(f"127.0.0.1:{port}", service=None, timeout_s=30, process=processes[0])
        yield f"127.0.0.1:{port}", tuple(p.pid for p in processes)
    finally:
        _stop(processes, timeout_s=10)
        os.unlink(f.name)


def wait_listening(processes: Sequence[subprocess.Popen[Any]], port: int, timeout_s: float) -> None:
    """Wait until every process listens on ``port`` (one that exits first raises ``RuntimeError``).

    Processes sharing a port (``SO_REUSEPORT``) cannot be told apart through it: a health check reaches whichever
    the kernel picks. A process binds its socket once it has loaded its index, just before it starts serving, and
    connections that reach it in between wait in its accept queue.
    """
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while not any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in _connections(process.pid)
        ):
            if process.poll() is not None:
                raise RuntimeError(f"process {process.pid} exited with {process.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {process.pid} was not listening on port {port} after {timeout_s:g} s")
            time.sleep(0.1)


def check_pids(target: str, server_pids: Sequence[int], worker_pid: int | None) -> None:
    """Refuse ``--server-pid``/``--worker-pid`` values that would make CPU per request silently wrong.

    Each serving pid must be a distinct live process listening on ``target``'s port (a ``scout serve --workers``
    parent serves nothing itself); the worker's pid must be live and not one of them. A process whose sockets
    this user may not read, or a target without a port, is taken on trust. Behind a port mapping the serving
    processes listen on another port than the target's: measure there without pids.
    """
    if len(set(server_pids)) != len(server_pids):
        raise ValueError(f"--server-pid names a process twice: {list(server_pids)}")
    if worker_pid is not None and worker_pid in server_pids:
        raise ValueError(f"--worker-pid {worker_pid} is also a --server-pid")
    port_text = target.rpartition(":")[2]
    port = int(port_text) if port_text.isdigit() else None  # a unix socket or a name without one: not checked
    for option, pid in [*(("--server-pid", p) for p in server_pids), ("--worker-pid", worker_pid)]:
        if pid is None:
            continue
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            raise ValueError(f"{option} {pid}: no such process") from None
        except psutil.AccessDenied:
            continue
        listening = any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)
        if option == "--server-pid" and port is not None and not listening:
            raise ValueError(
                f"--server-pid {pid} does not listen on port {port}: give each serving process's pid (the parent "
                "of scout serve --workers serves nothing itself; its children do)"
            )


def _connections(pid: int) -> list[Any]:
    try:
        return list(psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return []


def _stop(processes: Sequence[subprocess.Popen[Any]], timeout_s: float) -> None:
    """SIGTERM every process, then wait for each (killing one that outlives ``timeout_s``)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_serving(
    target: str, service: str | None = "", timeout_s: float = 60.0, process: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until ``target`` accepts calls (and, unless ``service`` is None, health says SERVING)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the process serving {target} exited with {process.returncode}")
            ready = grpc.channel_ready_future(channel)
            try:
                ready.result(timeout=1)
                if service is None:
                    return
                check = health_pb2_grpc.HealthStub(channel).Check
                if check(health_pb2.HealthCheckRequest(service=service), timeout=1).status == 1:
                    return
            except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
                last = exc
            finally:
                ready.cancel()  # else its polling thread outlives the channel and dies with "Channel closed!"
            time.sleep(0.1)
    raise TimeoutError(f"{target} was not serving after {timeout_s:g} s ({last})")


# --- a whole comparison: Scout (spawned or given) and the echo, level by level ---------------------------------


@contextlib.contextmanager
def scout_processes(config: Path | None, index: Path | None, workdir: Path, workers: int = 1) -> Any:
    """Start Redis, ``workers`` processes of ``scout serve --no-background`` and one ``scout worker``.

    Several serving processes share one port (``--reuse-port``), as ``scout serve --workers`` runs them. Yields
    ``(target, serve_pids, worker_pid)`` once every serving process listens; everything is stopped on exit.
    """
    from server.redis_server import RedisProcess

    redis_process = RedisProcess(workdir / "redis")
    env = dict(os.environ, SCOUT_REDIS_URL=redis_process.url, SCOUT_LOG_DIR=str(workdir / "logs"))
    common = [*(["--config", str(config)] if config else []), *(["--index", str(index)] if index else [])]
    scout = [sys.executable, "-m", "server.cli", "--log-level", "WARNING"]
    serve = [*scout, "serve", *common, "--port", str(port := free_port()), "--no-background"]
    serving: list[subprocess.Popen[Any]] = []
    worker: list[subprocess.Popen[Any]] = []
    try:
        for _ in range(workers):
            serving.append(subprocess.Popen([*serve, *(["--reuse-port"] if workers > 1 else [])], env=env))
        worker.append(subprocess.Popen([*scout, "worker", *common], env=env))
        wait_listening(serving, port, timeout_s=300)
        wait_serving(f"127.0.0.1:{port}", "scout.v1.Recommender", timeout_s=300, process=serving[0])
        yield f"127.0.0.1:{port}", tuple(p.pid for p in serving), worker[0].pid
    finally:
        _stop([*serving, *worker], timeout_s=30)
        redis_process.stop()


def sample_response(target: str, spec: LoadSpec, item_ids: Sequence[str]) -> bytes:
    """One real Recommend response of ``spec``'s shape, serialized: the echo answers with these bytes."""
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    with grpc.insecure_channel(target) as channel:
        try:
            reply = scout_pb2_grpc.RecommenderStub(channel).Recommend(
                requests_for(spec, item_ids, count=1)[0], timeout=30, metadata=metadata
            )
        except grpc.RpcError as exc:  # an unreachable target, a wrong token, an unknown surface: say so, once
            raise RuntimeError(f"{target}: the first Recommend failed: {exc.code().name}: {exc.details()}") from None
    return bytes(reply.SerializeToString())


def level_name(spec: LoadSpec) -> str:
    """``c16`` for a closed loop at concurrency 16, ``r500`` for an open loop at 500 requests/s."""
    return f"c{spec.concurrency}" if spec.rate is None else f"r{spec.rate:g}"


def compare(
    target: str,
    specs: Sequence[LoadSpec],
    item_ids: Sequence[str],
    server_pids: Sequence[int] = (),
    with_echo: bool = True,
    progress: bool = True,
    background_pid: int | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Run every spec against the echo (same response size) and then against ``target``; ratios per level.

    ``server_pids`` (the serving processes) and ``background_pid`` (the ``scout worker``) add their CPU per Scout
    request. The echo runs in ``workers`` processes sharing its port: the same setup as a Scout of that many
    serving processes.
    """
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    response = sample_response(target, specs[0], item_ids)
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(echo_process(response, workers)) if with_echo else None
        for spec in specs:
            level: dict[str, Any] = {
                "level": level_name(spec),
                "response_bytes": len(response),
                "workers": workers,
                "channels": spec.channels,
            }
            runs = ([("echo", *echo, None)] if echo is not None else []) + [
                ("scout", target, server_pids, background_pid)
            ]
            for name, address, pids, background in runs:
                with tqdm(
                    total=100,
                    desc=f"{level['level']} {name}",
                    unit="%",
                    disable=None if progress else True,
                    leave=False,
                ) as bar:

                    def tick(fraction: float, bar: Any = bar) -> None:
                        bar.update(int(fraction * 100) - bar.n)

                    report = asyncio.run(run_load(address, spec, item_ids, pids, tick, background))
                level[name] = report
            if echo is not None:
                scout_report, echo_report = level["scout"], level["echo"]
                level["ratios"] = {
                    "p50": scout_report.latency_ms["p50"] / echo_report.latency_ms["p50"],
                    "p99": scout_report.latency_ms["p99"] / echo_report.latency_ms["p99"],
                    "throughput": _served(scout_report) / _served(echo_report) if _served(echo_report) else None,
                }
            results.append(level)
    return results


def _served(report: LoadReport) -> float:
    """Requests served per second: a closed loop's throughput, an open loop's ``served_per_s``."""
    return report.throughput if report.served_per_s is None else report.served_per_s


def table(results: Sequence[dict[str, Any]]) -> str:
    """A terminal table: one row per level and server, then the ratios.

    An open loop's req/s is what was served (OK answers over the time from the first due request to the last
    answer), which falls below the asked rate when the server cannot keep up. A note follows for each open-loop
    run whose load generator fell behind its schedule (p99 send lag over :data:`SEND_LAG_WARN_MS`).
    """
    notes: list[str] = []
    rows = [f"{'level':>6} {'server':>6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
            f"{'cpu ms/req':>10} {'bg ms/req':>9} errors"]  # fmt: skip
    for level in results:
        for name in ("echo", "scout"):
            if name not in level:
                continue
            r: LoadReport = level[name]
            cpu, bg = (
                "-" if used is None else f"{used * 1000:.2f}"
                for used in (r.server_cpu_s_per_request, r.background_cpu_s_per_request)
            )
            lat = r.latency_ms
            rows.append(
                f"{level['level']:>6} {name:>6} {_served(r):9.1f} {lat['p50']:8.2f} {lat['p90']:8.2f} "
                f"{lat['p99']:8.2f} {lat['p99.9']:9.2f} {cpu:>10} {bg:>9} {dict(r.errors) or 0}"
            )
            lag = r.send_lag_ms
            if lag is not None and lag["p99"] > SEND_LAG_WARN_MS:
                notes.append(
                    f"{level['level']} {name}: the load generator sent requests up to {lag['p99']:.0f} ms (p99) after "
                    "their due times, so it offered less than the rate asked: it shares the CPU with the server, or "
                    "its own loop is full. Latencies still count from the due times."
                )
        if "ratios" in level:
            ratios = level["ratios"]
            rows.append(
                f"{level['level']:>6} {'ratio':>6} {ratios['throughput'] or float('nan'):9.2f} {ratios['p50']:8.2f} "
                f"{'':>8} {ratios['p99']:8.2f}   (scout / echo)"
            )
    return "\n".join(rows + [f"note: {note}" for note in notes])


def save(results: Sequence[dict[str, Any]], out: Path, machine: dict[str, Any]) -> list[Path]:
    """Write ``out`` (JSON), a latency-CDF plot (``.png``) and a throughput plot (``-throughput.png``) next to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = []
    for level in results:
        entry = {k: (v.summary() if isinstance(v, LoadReport) else v) for k, v in level.items()}
        levels.append(entry)
    out.write_text(json_dumps({"machine": machine, "levels": levels}))
    written = [out]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:  # plots need the report extra; the JSON is complete without them
        return written
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, level in zip(axes[0], results, strict=True):
        for name, style in (("echo", "--"), ("scout", "-")):
            if name in level and level[name].latencies_ms:
                values = np.sort(np.asarray(level[name].latencies_ms))
                ax.plot(values, np.arange(1, values.size + 1) / values.size, style, label=name)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, not 10^1
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow range labelled every minor tick, overlapping
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(level["level"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(results)), 4))
    x = np.arange(len(results))
    for offset, name in ((-0.2, "echo"), (0.2, "scout")):
        ax.bar(x + offset, [_served(level[name]) if name in level else 0.0 for level in results], 0.4, label=name)
    ax.set_xticks(x, [level["level"] for level in results])
    ax.set_ylabel("OK requests/s")
    ax.set_title("throughput")
    ax.legend()
    fig.tight_layout()
    bars = out.with_name(f"{out.stem}-throughput.png")
    fig.savefig(bars, dpi=100)
    plt.close(fig)
    return [*written, png, bars]


def json_dumps(value: Any) -> str:
    """JSON with NaN written as null."""
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2) + "\n"


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on: cores, load averages, memory, Python, grpc."""
    import platform

    return {
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "platform": platform.platform(),
    }


if __name__ == "__main__":  # the echo process: python -m server.bench RESPONSE_FILE PORT
    asyncio.run(serve_echo(Path(sys.argv[1]).read_bytes(), int(sys.argv[2])))
