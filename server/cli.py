"""The ``scout`` command line: demo, world, build, serve, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.logs import configure as configure_logging

if TYPE_CHECKING:
    from embeddings.factory import IndexConfig

log = logging.getLogger("scout")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scout`` console script."""
    parser = argparse.ArgumentParser(prog="scout", description="Scout: retrieve, explore, evaluate offline.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: one object per line with time, level, logger, message and request_id",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the whole loop on a synthetic world and evaluate offline",
        description="Build a synthetic world and its index, serve it on an embedded Redis, "
        "drive simulated users over gRPC, export the joined logs, and estimate offline the value of a policy "
        "never served (the control variant's model at half time, greedier) from the decisions logged after it, "
        "next to the world's true value.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path(".scout/demo"),
        help="working directory, cleared first; one holding files the demo did not write is refused "
        "(default .scout/demo)",
    )
    demo.add_argument(
        "--decisions",
        type=integer(2, 10**7),
        default=20000,
        help="Recommend calls to make, 2..10000000: the target learns from the first half (default 20000)",
    )
    demo.add_argument(
        "--items", type=integer(1, 10**7), default=20000, help="catalog size, 1..10000000 (default 20000)"
    )
    demo.add_argument(
        "--concurrency", type=integer(1, 1024), default=8, help="simulated users in flight, 1..1024 (default 8)"
    )
    demo.add_argument("--seed", type=SEED, default=0, help="seed of the world and the simulation (default 0)")

    world = commands.add_parser(
        "world",
        help="write a synthetic world's catalog to Parquet",
        description="Generate a synthetic world and write its catalog as Parquet.",
    )
    world.add_argument("--out", type=Path, required=True, help="catalog file to write (.parquet)")
    world.add_argument(
        "--items", type=integer(1, 10**7), default=20000, help="number of items, 1..10000000 (default 20000)"
    )
    world.add_argument("--seed", type=SEED, default=0, help="world seed (default 0)")

    build = commands.add_parser(
        "build",
        help="catalog -> content embeddings -> FAISS index artifact",
        description="Encode a catalog's content signals with the torch content encoder and "
        "write a versioned FAISS index artifact directory.",
    )
    build.add_argument("--catalog", type=Path, required=True, help="catalog Parquet file")
    build.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    build.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default auto)")
    build.add_argument("--dim", type=integer(1, 4096), default=32, help="embedding dimension, 1..4096 (default 32)")
    build.add_argument("--batch-size", type=COUNT, default=4096, help="items per encoding batch (default 4096)")
    build.add_argument("--seed", type=SEED, default=0, help="encoder seed (default 0)")
    build.add_argument(
        "--text-encoder", choices=("hashed", "minilm"), default="hashed", help="text encoder (default hashed)"
    )
    build.add_argument("--text-cache", type=Path, help="text-vector cache directory (re-encode only changed texts)")
    build.add_argument(
        "--index-type",
        choices=("auto", "flat", "ivf_flat", "ivf_pq", "hnsw"),
        default="auto",
        help="FAISS index (default auto: flat below 50k items, else IVF-Flat with fp16 lists and nprobe tuned to the "
        "target recall)",
    )
    build.add_argument("--nlist", type=integer(1, 2**20), help="IVF lists (default 4*sqrt(N) as a power of two)")
    build.add_argument("--nprobe", type=integer(1, 2**20), help="IVF lists probed per query (default: tuned)")
    build.add_argument("--pq-m", type=integer(1, 4096), help="IVF-PQ sub-quantizers (default 16)")
    build.add_argument(
        "--pq-bits",
        type=integer(1, 16),
        help="IVF-PQ bits per code (default 8; 4 scans the codes in SIMD blocks)",
    )
    build.add_argument(
        "--rerank",
        type=integer(0, 1000),
        default=0,
        help="IVF-PQ: re-score RERANK x k candidates exactly from the stored vectors (default 0: off)",
    )
    build.add_argument(
        "--fp16",
        action="store_true",
        help="with --index-type ivf_flat: keep the vectors as 16-bit floats (half the memory, faster scans at "
        "about the same recall; auto does so already)",
    )
    build.add_argument("--m", type=integer(1, 1024), help="HNSW graph degree (default 32)")
    build.add_argument("--ef-construction", type=integer(1, 10**6), help="HNSW build beam (default 40)")
    build.add_argument("--ef-search", type=integer(1, 10**6), help="HNSW search beam (default: tuned)")
    build.add_argument("--train-size", type=COUNT, help="vectors sampled to train IVF (default min(N, 64*nlist))")
    build.add_argument(
        "--target-recall",
        type=number(0, 1, low_open=True),
        default=0.95,
        help="recall@200 the tuned nprobe/ef-search reach (default 0.95)",
    )
    build.add_argument("--publish", action="store_true", help="write --out/<version>/ and point --out/CURRENT at it")
    build.add_argument(
        "--tower", type=Path, help="index with this trained content tower (scout train-tower) instead of the encoder"
    )

    train = commands.add_parser(
        "train-tower",
        help="train the content tower on co-engagement pairs",
        description="Train the content tower (in-batch InfoNCE) so items engaged by the same units land close "
        "together, from Scout's exported logs (served items with a positive reward, paired per unit) or from the "
        "synthetic world that made --catalog (scout world). Writes the weights as npz (no pickle); use them with "
        "scout build --tower.",
    )
    train.add_argument("--catalog", type=Path, required=True, help="catalog Parquet file")
    train.add_argument("--out", type=Path, required=True, help="weights file to write (.npz)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--logs", help="exported Scout logs: Parquet file or directory, a path or a gs://, s3:// URI")
    source.add_argument(
        "--synthetic-seed", type=SEED, help="the --seed `scout world` made --catalog with: pairs from its users"
    )
    train.add_argument(
        "--text-encoder", choices=("hashed", "minilm"), default="hashed", help="text input (default hashed)"
    )
    train.add_argument("--dim", type=integer(1, 4096), default=32, help="vector dimension, 1..4096 (default 32)")
    train.add_argument("--epochs", type=integer(1, 10**5), default=8, help="passes over the pairs (default 8)")
    train.add_argument("--batch-size", type=COUNT, default=512, help="pairs per step (default 512)")
    train.add_argument(
        "--workers", type=integer(0, 64), default=0, help="data loader worker processes, 0..64 (default 0)"
    )
    train.add_argument("--max-pairs-per-unit", type=COUNT, default=200, help="pairs sampled per unit (default 200)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default auto)")
    train.add_argument("--seed", type=SEED, default=0, help="weights and pair order seed (default 0)")

    serve = commands.add_parser(
        "serve",
        help="serve the Recommender gRPC API",
        description="Serve Recommend, Reward and RewardStream over gRPC with health checking and "
        "reflection (v1 and v1alpha), plus the joiner, learner and exporter loops. TLS, mutual TLS and bearer "
        "tokens come from [security] (or SCOUT_TLS_* / SCOUT_TOKENS_FILE); Prometheus metrics from "
        "server.metrics_port (or SCOUT_METRICS_PORT, or --metrics-port).",
    )
    serve.add_argument("--config", type=Path, help="TOML settings overriding the embedded defaults")
    serve.add_argument("--port", type=port_number, help="port to listen on, 0..65535 (0 picks a free one)")
    serve.add_argument("--index", type=Path, help="index artifact directory")
    serve.add_argument(
        "--metrics-port", type=port_number, help="serve Prometheus metrics on this HTTP port (0 picks a free one)"
    )
    serve.add_argument(
        "--workers",
        type=integer(1, 64),
        default=1,
        help="serving processes sharing the port with SO_REUSEPORT, 1..64, plus one `scout worker` for the "
        "background loops (default 1: a single process); needs a fixed --port",
    )
    serve.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set by --workers)")
    serve.add_argument(
        "--no-background",
        action="store_true",
        help="serve requests only; run the joiner, learner and exporter elsewhere",
    )

    bench = commands.add_parser(
        "bench",
        help="load-test Scout against a bare gRPC echo in the same run",
        description="Closed-loop (--concurrency) and open-loop (--rate) Recommend/Reward load against Scout and, in "
        "the same run, against a bare gRPC echo server answering responses of the same size: p50/p90/p99/p99.9, "
        "throughput, errors by status code, server CPU per request, and Scout/echo ratios. Without --target it "
        "starts its own Redis, `scout serve --no-background` (--workers processes of it on one port) and `scout "
        "worker` from --config/--index. Saves JSON and latency-CDF and throughput plots.",
    )
    bench.add_argument("--target", help="HOST:PORT of a running Scout server (default: start one)")
    bench.add_argument(
        "--server-pid",
        type=PID,
        nargs="+",
        help="with --target: the serving processes' pids (each one of a --workers server), for CPU per request",
    )
    bench.add_argument("--worker-pid", type=PID, help="with --target: the scout worker's pid, for its CPU per request")
    bench.add_argument("--config", type=Path, help="TOML settings for the started server")
    bench.add_argument("--index", type=Path, help="index artifact (or versions root) the requests draw seeds from")
    bench.add_argument(
        "--concurrency", type=integer(1, 4096), nargs="*", default=[1, 16], help="closed-loop levels (default 1 16)"
    )
    bench.add_argument(
        "--rate", type=number(0, 10**6, low_open=True), nargs="*", default=[], help="open-loop levels, requests/s"
    )
    bench.add_argument(
        "--duration", type=number(0, 86400, low_open=True), default=10.0, help="measured seconds per level and server"
    )
    bench.add_argument(
        "--warmup", type=number(0, 86400), default=2.0, help="unmeasured seconds before each measurement"
    )
    bench.add_argument("--num-items", type=integer(1, 1000), default=10, help="slate size asked for (default 10)")
    bench.add_argument("--surface", default="home", help="surface to fill (default home)")
    bench.add_argument("--reward-share", type=number(0, 1), default=0.0, help="rewards sent per Recommend, 0..1")
    bench.add_argument("--token", help="bearer token, if the server wants one")
    bench.add_argument("--seed", type=SEED, default=0, help="seed of the request mix")
    bench.add_argument(
        "--workers",
        type=integer(1, 64),
        default=1,
        help="serving processes sharing one port, as scout serve --workers runs them (default 1): without --target, "
        "started so; with --target, how many the target runs (then --server-pid names each). The echo gets as many",
    )
    bench.add_argument(
        "--channels",
        type=integer(1, 256),
        help="client channels (TCP connections) the load is spread over (default 1, or 4 per worker with --workers: "
        "the kernel gives each connection to one process); in a closed loop, channels beyond --concurrency stay idle",
    )
    bench.add_argument("--no-echo", action="store_true", help="skip the echo floor")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/bench.json"), help="JSON (and two PNG plots next to it)"
    )

    worker = commands.add_parser(
        "worker",
        help="run the joiner, learner and/or exporter as their own process",
        description="Run background loops against a shared Redis (redis_url or SCOUT_REDIS_URL), next to "
        "servers started with --no-background. With no role flag, runs all three. Any number of workers "
        "may share one Redis.",
    )
    worker.add_argument("--config", type=Path, help="TOML settings overriding the embedded defaults")
    worker.add_argument("--index", type=Path, help="index artifact directory (the learner replays with it)")
    worker.add_argument("--joiner", action="store_true", help="join decisions whose reward window closed")
    worker.add_argument("--learner", action="store_true", help="learn from joined decisions, publish snapshots")
    worker.add_argument("--exporter", action="store_true", help="export joined decisions and late rewards")
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve the loops' Prometheus metrics on this HTTP port (0 picks a free one; on server.metrics_host)",
    )

    reload_index = commands.add_parser(
        "reload-index",
        help="point a versions root's CURRENT at a published version (servers swap it in)",
        description="Rewrite --index/CURRENT (atomically) to name a version already published under --index, "
        "e.g. to roll back. Every server watching the root swaps it in within server.index_watch_interval_s. "
        "Without --version, prints the current and the published versions.",
    )
    reload_index.add_argument("--index", type=Path, required=True, help="versions root (holds CURRENT)")
    reload_index.add_argument("--version", help="a published version to serve")

    evaluate = commands.add_parser(
        "evaluate",
        help="compare candidate policies on exported logs",
        description="Replay exported logs with one or more candidate policies, estimate each one's expected slate "
        "reward with intervals and diagnostics, rank them, and say whether each beats the logging policy "
        "(its interval's lower bound, from the primary estimator, above the logged mean). Candidates come from "
        "snapshot files, a served variant's (or shadow's) current snapshot fetched from Redis by name, fresh "
        "policies by type, or a TOML file.",
    )
    evaluate.add_argument(
        "--logs", required=True, help="Parquet log file or directory: a local path or a gs://, s3://, hdfs:// URI"
    )
    evaluate.add_argument("--index", type=Path, required=True, help="the index artifact the logs were made with")
    evaluate.add_argument(
        "--snapshot",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="policy snapshot file to evaluate, repeatable (named by the file's stem unless NAME= is given)",
    )
    evaluate.add_argument(
        "--served",
        action="append",
        default=[],
        metavar="EXPERIMENT/VARIANT",
        help="the current snapshot a variant serves (or EXPERIMENT/VARIANT/shadow:NAME), read from --redis-url; "
        "repeatable",
    )
    evaluate.add_argument(
        "--redis-url", default=os.environ.get("SCOUT_REDIS_URL"), help="Redis of --served (default SCOUT_REDIS_URL)"
    )
    evaluate.add_argument(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("SCOUT_REDIS_CLUSTER", "").lower() in ("1", "true"),
        help="--redis-url names a node of a Redis Cluster (default SCOUT_REDIS_CLUSTER)",
    )
    evaluate.add_argument("--key-prefix", default="scout", help="the servers' key_prefix (default scout)")
    evaluate.add_argument(
        "--generation",
        type=integer(0, 10**9),
        default=0,
        help="the --served variants' generation (see warm start; default 0)",
    )
    evaluate.add_argument("--policy", action="append", default=[], help="fresh policy type to evaluate, repeatable")
    evaluate.add_argument(
        "--candidates",
        type=Path,
        help="TOML file of [[candidate]] tables with name, and snapshot (a file) or policy (a type), and params",
    )
    evaluate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy parameter for every --snapshot/--policy candidate, repeatable (overrides the snapshot's)",
    )
    evaluate.add_argument("--variant", help="only decisions logged by this variant")
    evaluate.add_argument(
        "--since",
        type=epoch_ms,
        metavar="TIME",
        help="only decisions made at or after TIME (ISO 8601, UTC unless it names an offset, or milliseconds since "
        "the epoch, 13 digits): evaluate a snapshot on decisions it has not learned from",
    )
    _estimation_options(evaluate)
    evaluate.add_argument("--primary", help="estimator that ranks and gates (default: the last of --estimators)")
    evaluate.add_argument(
        "--learning",
        action="store_true",
        help="also replay each candidate as an online learner over the logs in time order (its value along its own "
        "learning trajectory; see offline_eval/learning_replay.py)",
    )
    evaluate.add_argument(
        "--learn-every",
        type=COUNT,
        default=500,
        help="with --learning: logged decisions between the learner's updates (default 500)",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--html", type=Path, help="also write a self-contained HTML report with plots here")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    external = commands.add_parser(
        "evaluate-external",
        help="estimate a policy from bandit logs made outside Scout (CSV/Parquet)",
        description="Estimate a target policy's expected slate reward from external bandit logs: one row per logged "
        "action with action, reward, propensity and target_propensity (the target's probability of the same "
        "action), optional round, position (0-based) and x_<name> context columns; see offline_eval/external_log.py. "
        "Streams the files in batches (memory bounded by --batch-size). The same as python -m offline_eval.beam, "
        "in this process, with a table or JSON on stdout.",
    )
    external.add_argument(
        "--logs", required=True, help="a .csv/.parquet file or a directory of them: a local path or a URI"
    )
    _estimation_options(external)
    external.add_argument(
        "--batch-size",
        type=integer(1, 1 << 24),
        default=1 << 20,
        help="rows read per batch, 1..16777216; bounds the memory (default 1048576)",
    )
    external.add_argument(
        "--reward-range",
        type=number(),
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="bounds of one slot's reward, for flagging impossible estimates (default: the observed range)",
    )
    external.add_argument("--json", action="store_true", help="print JSON instead of a table")
    external.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    args = parser.parse_args(argv)
    if args.command in ("serve", "worker"):  # what `scout serve --workers` starts: never outlive it
        from server.redis_server import PARENT_PID_ENV, die_with_parent

        if parent := os.environ.pop(PARENT_PID_ENV, ""):
            if not parent.isdigit():
                parser.error(f"{PARENT_PID_ENV} must be a process id, got {parent[:40]!r}")
            die_with_parent(int(parent))
    configure_logging(args.log_level, args.log_format)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it tried: noise unless debugging
    try:
        return int(COMMANDS[args.command](args) or 0)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what the command holds is released on the way out, without a traceback
        log.error("interrupted")
        return 130
    except Exception as exc:
        if not _unreachable_redis(exc):
            raise
        log.error("cannot reach Redis: %s (is it running, and are redis_url / SCOUT_REDIS_URL right?)", exc)
        return 1


def _unreachable_redis(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached (redis-py is imported only by the commands that use it)."""
    redis = sys.modules.get("redis")
    return redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (argparse names the flag when it refuses one)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low}..{high}, got {text[:40]!r}")
        return value

    return parse


def number(
    low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number between ``low`` and ``high`` (excluded where open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {bounds}, got {text[:40]!r}")
        return value

    return parse


#: Seeds: numpy's and torch's generators take any of these.
SEED = integer(0, 2**63 - 1)
#: Counts with no natural limit below a C int's.
COUNT = integer(1, 2**31 - 1)
#: Process ids (Linux's pid_max is at most 2**22).
PID = integer(1, 2**22)


def _estimation_options(parser: argparse.ArgumentParser) -> None:
    """The estimator options ``evaluate`` and ``evaluate-external`` share."""
    parser.add_argument(
        "--estimators", default="ips,snips,dr", help="comma-separated estimators, or 'all' (default ips,snips,dr)"
    )
    parser.add_argument(
        "--bootstrap",
        type=integer(0, 10**5),
        default=0,
        help="Poisson bootstrap replicates, 0..100000; 0 gives normal intervals (default 0)",
    )
    parser.add_argument(
        "--level", type=number(0, 1, low_open=True, high_open=True), default=0.95, help="interval level (default 0.95)"
    )
    parser.add_argument("--seed", type=SEED, default=0, help="bootstrap and cross-fitting seed (default 0)")


def port_number(text: str) -> int:
    """``--port``: an integer in 0..65535 (argparse names the flag when this refuses)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..65535, got {text!r}")
    return port


def epoch_ms(text: str) -> int:
    """``--since``: milliseconds since the epoch (13 digits), or an ISO 8601 time.

    An ISO time is UTC unless it names an offset, and is rounded up to the next millisecond, so that nothing made
    before it is kept. Other runs of digits are refused (ten digits are most likely seconds).
    """
    text = text.strip()
    if re.fullmatch(r"[0-9]{13}", text):
        return int(text)
    try:
        if len(text) > 40:
            raise ValueError("too long")
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time or milliseconds since the epoch (13 digits), got {text[:80]!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    micros = (when - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)) // datetime.timedelta(microseconds=1)
    return -(-micros // 1000)


def _demo(args: argparse.Namespace) -> int:
    from server.demo import DemoConfig, run_demo

    config = DemoConfig(args.dir, args.decisions, args.items, args.concurrency, args.seed)
    return asyncio.run(run_demo(config))


def _world(args: argparse.Namespace) -> None:
    from embeddings.catalog import write_catalog
    from offline_eval.world import SyntheticWorld, WorldConfig

    world = SyntheticWorld(WorldConfig(num_items=args.items, num_creators=max(1, args.items // 20), seed=args.seed))
    write_catalog(world.catalog, args.out)
    log.info("wrote %d items to %s", len(world.catalog), args.out)


_INDEX_FLAGS = {
    "index_type": "--index-type",
    "nlist": "--nlist",
    "nprobe": "--nprobe",
    "pq_m": "--pq-m",
    "pq_bits": "--pq-bits",
    "rerank": "--rerank",
    "fp16": "--fp16",
    "hnsw_m": "--m",
    "ef_construction": "--ef-construction",
    "ef_search": "--ef-search",
    "train_size": "--train-size",
    "target_recall": "--target-recall",
}


def _index_config(args: argparse.Namespace) -> IndexConfig:
    from embeddings.factory import IndexConfig

    return IndexConfig(
        index_type=args.index_type,
        nlist=args.nlist,
        nprobe=args.nprobe,
        pq_m=args.pq_m,
        pq_bits=args.pq_bits,
        rerank=args.rerank,
        fp16=args.fp16,
        hnsw_m=args.m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        train_size=args.train_size,
        target_recall=args.target_recall,
    )


def _build(args: argparse.Namespace) -> None:
    from embeddings.builder import build_artifact
    from embeddings.catalog import read_catalog
    from embeddings.encoder import EncoderConfig

    config = EncoderConfig(
        dim=args.dim, batch_size=args.batch_size, seed=args.seed, device=args.device, text_encoder=args.text_encoder
    )
    try:
        index_config = _index_config(args)
    except ValueError as exc:  # name the flags, not IndexConfig's fields
        message = str(exc)
        for field, flag in _INDEX_FLAGS.items():
            message = re.sub(rf"\b{field}\b", flag, message)
        raise ValueError(message) from None
    catalog = read_catalog(args.catalog)
    if args.tower is not None:
        from embeddings.builder import build_tower_artifact

        artifact = build_tower_artifact(catalog, args.tower.read_bytes(), index_config=index_config)
    else:
        artifact = build_artifact(catalog, config, progress=True, index_config=index_config, text_cache=args.text_cache)
    if args.publish:
        artifact.publish(args.out)
    else:
        artifact.save(args.out)
    print(json.dumps(artifact.manifest, indent=2))


def _train_tower(args: argparse.Namespace) -> None:
    import numpy as np

    from embeddings.catalog import read_catalog
    from embeddings.encoder import resolve_device
    from embeddings.text import make_text_encoder
    from embeddings.tower import ContentTower, TowerConfig, co_engagement_pairs

    catalog = read_catalog(args.catalog)
    if args.logs is not None:
        from offline_eval.engagement import logged_engagements
        from offline_eval.logs import read_logs

        units, item_ids = logged_engagements(read_logs(args.logs))
        position = {item: k for k, item in enumerate(catalog.item_ids.tolist())}
        known = np.array([item in position for item in item_ids], dtype=bool)
        units, items = units[known], np.array([position[i] for i in item_ids[known]], dtype=np.int64)
        log.info("%d engagements in %s (%d of items not in the catalog)", len(units), args.logs, int((~known).sum()))
    else:
        from offline_eval.engagement import synthetic_engagements
        from offline_eval.world import SyntheticWorld, WorldConfig

        n = len(catalog)
        world = SyntheticWorld(WorldConfig(num_items=n, num_creators=max(1, n // 20), seed=args.synthetic_seed))
        same = world.catalog.item_ids.tolist() == catalog.item_ids.tolist()
        if not same or world.catalog.texts.tolist() != catalog.texts.tolist():
            raise ValueError(f"{args.catalog}: not the catalog `scout world --seed {args.synthetic_seed}` makes")
        units, items = synthetic_engagements(world, np.arange(world.config.num_users), 2000, 30, args.seed)
    pairs = co_engagement_pairs(units, items, args.max_pairs_per_unit, args.seed)
    if len(pairs) == 0:
        raise ValueError("no co-engagement pairs: no unit engaged with two catalog items")
    config = TowerConfig(
        dim=args.dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
    )
    text = make_text_encoder(args.text_encoder, 256, device=resolve_device(args.device).type)
    tower, features = ContentTower.for_catalog(catalog, config, text)
    report = tower.fit(features, pairs, progress=True)
    args.out.write_bytes(tower.to_bytes())
    summary = {"pairs": len(pairs), "device": report.device, "amp": report.amp, "losses": report.losses}
    print(json.dumps(summary | {"out": str(args.out)}, indent=2))


def _serve(args: argparse.Namespace) -> None:
    from server.app import limit_native_threads, start_server
    from server.settings import Settings, load_settings

    def load() -> Settings:  # the file, SCOUT_* and these flags: at start and at every config reload
        settings = load_settings(args.config)
        if args.port is not None:
            settings = replace(settings, server=replace(settings.server, port=args.port))
        if args.index is not None:
            settings = replace(settings, index=args.index)
        if args.metrics_port is not None:
            settings = replace(settings, server=replace(settings.server, metrics_port=args.metrics_port))
        if args.reuse_port:
            settings = replace(settings, server=replace(settings.server, reuse_port=True))
        return settings

    settings = load()
    if args.workers != 1:
        from server.supervisor import run_workers

        log_args = ("--log-level", args.log_level, "--log-format", args.log_format)
        run_workers(settings, args.workers, args.config, not args.no_background, log_args)
        return

    limit_native_threads()

    async def serve() -> None:
        config = None if args.config is None else (args.config, load)
        server = await start_server(settings, background=not args.no_background, config=config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("listening on port %d; Ctrl-C to stop", server.port)
        if server.metrics_port is not None:
            log.info("metrics at http://%s:%d/metrics", settings.server.metrics_host, server.metrics_port)
        await stop.wait()
        log.info("shutting down: draining requests and flushing logs")
        await server.stop()

    asyncio.run(serve())


def _worker(args: argparse.Namespace) -> None:
    from server.app import limit_native_threads
    from server.settings import Settings, load_settings
    from server.worker import ROLES, run_worker

    def load() -> Settings:
        settings = load_settings(args.config)
        return settings if args.index is None else replace(settings, index=args.index)

    settings = load()
    roles = tuple(role for role in ROLES if getattr(args, role)) or ROLES
    limit_native_threads()  # it shares the cores with serving processes, as they share them with it

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        config = None if args.config is None else (args.config, load)
        await run_worker(settings, roles, stop, config, metrics_port=args.metrics_port)

    asyncio.run(work())


def _reload_index(args: argparse.Namespace) -> None:
    from embeddings.index import CURRENT, IndexArtifact
    from server.indexes import point_current

    published = IndexArtifact.versions(args.index)
    if args.version is None:
        current = IndexArtifact.current_version(args.index)
        for version in published:
            print(f"{'*' if version == current else ' '} {version}")
        return
    if args.version not in published:
        raise ValueError(f"--version {args.version!r} is not published under {args.index} (have {published})")
    point_current(args.index, args.version)
    log.info(
        "%s now names %s; servers watching it swap within their watch interval", args.index / CURRENT, args.version
    )


def _served_snapshot(args: argparse.Namespace, name: str) -> bytes:
    """The snapshot state a served variant (``EXPERIMENT/VARIANT``, or a shadow's key) has in Redis."""
    import redis

    experiment, sep, variant = name.partition("/")
    if not (experiment and sep and variant):
        raise ValueError(f"--served {name!r}: expected EXPERIMENT/VARIANT (or EXPERIMENT/VARIANT/shadow:NAME)")
    if not args.redis_url:
        raise ValueError("--served needs --redis-url (or SCOUT_REDIS_URL): the Redis the servers share")
    key = f"{{{args.key_prefix}}}:policy:{experiment}:{variant}" + (f"#g{args.generation}" if args.generation else "")
    connect = redis.RedisCluster.from_url if args.redis_cluster else redis.Redis.from_url
    client = connect(args.redis_url, socket_connect_timeout=5, socket_timeout=10)
    try:
        state = client.hget(key, "state")
    except redis.RedisError as exc:
        raise ValueError(f"--served {name!r}: cannot read {key} from --redis-url: {exc}") from exc
    finally:
        client.close()
    if not state:
        raise ValueError(f"--served {name!r}: no snapshot under {key} (has the learner published one yet?)")
    return bytes(state)  # type: ignore[arg-type]


def _evaluate(args: argparse.Namespace) -> None:
    import tomllib

    import numpy as np
    from tqdm import tqdm

    from bandits.features import feature_dim
    from bandits.registry import create_policy, load_policy
    from embeddings.index import IndexArtifact
    from offline_eval.comparison import Candidate, compare
    from offline_eval.estimators import create_estimators
    from offline_eval.logs import read_logs
    from offline_eval.report import format_table, html_report, to_dict
    from offline_eval.summary import finite_json

    index = IndexArtifact.load(args.index)
    log_data = read_logs(args.logs)
    if args.variant:
        log_data = log_data.where(np.array(log_data["variant"]) == args.variant)
        if len(log_data) == 0:
            raise ValueError(f"--variant {args.variant!r}: no decisions of that variant in {args.logs}")
    if args.since is not None:
        log_data = log_data.where(log_data.decided_ms() >= args.since)
        if len(log_data) == 0:
            when = datetime.datetime.fromtimestamp(args.since / 1000, datetime.UTC).isoformat(timespec="milliseconds")
            raise ValueError(f"--since {when}: no decisions made at or after it in {args.logs}")
    keys = log_data["context_keys"][0] if len(log_data) else []
    dim = feature_dim(index.dim, len(keys))
    params = _parse_params(args.param)
    candidates = []
    for spec in args.snapshot:
        name, sep, file = spec.partition("=")
        path = Path(file if sep else spec)
        candidates.append(Candidate(name if sep else path.stem, load_policy(path.read_bytes(), params)))
    for name in args.served:
        candidates.append(Candidate(name, load_policy(_served_snapshot(args, name), params)))
    for policy in args.policy:
        candidates.append(Candidate(policy, create_policy(policy, dim, params)))
    if args.candidates is not None:
        try:
            table = tomllib.loads(args.candidates.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{args.candidates}: not valid TOML: {exc}") from exc
        for i, entry in enumerate(table.get("candidate", [])):
            where = f"{args.candidates}: candidate[{i}]"
            unknown = set(entry) - {"name", "snapshot", "policy", "params"}
            if unknown or "name" not in entry or ("snapshot" in entry) == ("policy" in entry):
                raise ValueError(f"{where}: needs name and exactly one of snapshot, policy (and optional params)")
            extra = dict(entry.get("params", {}))
            if "snapshot" in entry:
                snapshot = (args.candidates.parent / entry["snapshot"]).read_bytes()
                policy_obj = load_policy(snapshot, extra)
            else:
                policy_obj = create_policy(entry["policy"], dim, extra)
            candidates.append(Candidate(str(entry["name"]), policy_obj))
    if not candidates:
        raise ValueError(
            "give at least one candidate: --snapshot FILE, --served EXPERIMENT/VARIANT, --policy NAME or "
            "--candidates FILE"
        )
    estimators = create_estimators([e.strip() for e in args.estimators.split(",") if e.strip()])
    bar = tqdm(total=len(candidates), desc="candidates", unit="policy", disable=args.no_progress, file=sys.stderr)
    try:
        result = compare(
            log_data,
            index,
            candidates,
            estimators,
            args.primary,
            args.bootstrap,
            args.level,
            args.seed,
            progress=lambda _: bar.update(),
        )
    finally:
        bar.close()
    learning = []
    if args.learning:
        from offline_eval.learning_replay import replay_learning_log

        bar = tqdm(
            total=len(candidates) * len(log_data),
            desc="learning replay",
            unit="dec",
            file=sys.stderr,
            disable=args.no_progress,
        )
        try:
            for candidate in candidates:  # a copy learns: the candidates stay as given
                learner = load_policy(candidate.policy.to_bytes())
                replayed = replay_learning_log(
                    log_data, index, learner, args.learn_every, args.seed, args.level, bar.update
                )
                learning.append((candidate.name, replayed))
        finally:
            bar.close()
    if args.html is not None:
        args.html.write_text(html_report(result))
        log.info("wrote %s", args.html)
    if args.json:
        out = to_dict(result)
        if args.learning:
            out["learning_replay"] = [_learning_dict(name, r) for name, r in learning]
        print(json.dumps(finite_json(out), indent=2))  # the learning replay's numbers too
    else:
        print(format_table(result))
        for name, r in learning:
            e = r.estimate
            print(
                f"learning replay {name}: {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}] over {r.kept} kept of "
                f"{r.decisions} decisions ({r.updates} updates)"
            )


def _evaluate_external(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from offline_eval.estimators import create_estimators
    from offline_eval.report import flag_lines, format_estimates
    from offline_eval.streaming import evaluate_external

    if args.reward_range is not None and not args.reward_range[0] <= args.reward_range[1]:
        raise ValueError(f"--reward-range: LOW must not exceed HIGH, got {args.reward_range}")
    estimators = create_estimators([e.strip() for e in args.estimators.split(",") if e.strip()])
    bar = tqdm(desc="rounds", unit="round", disable=args.no_progress, file=sys.stderr, delay=0.5)
    try:
        result = evaluate_external(
            args.logs,
            estimators,
            args.batch_size,
            args.bootstrap,
            args.level,
            args.seed,
            reward_range=None if args.reward_range is None else tuple(args.reward_range),
            progress=lambda done: bar.update(done - bar.n),
        )
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    d = result.diagnostics
    print(f"{d.n} rounds; effective sample size {d.effective_sample_size:.0f}; largest weight {d.max_weight:.4g}\n")
    print(format_estimates(result.estimates, level=args.level))
    for line in flag_lines(result.estimates):
        print(line)
    for warning in d.warnings:
        print(f"warning: {warning}")


def _learning_dict(name: str, replayed: Any) -> dict[str, Any]:
    e = replayed.estimate
    return {
        "name": name,
        "value": e.value,
        "lower": e.lower,
        "upper": e.upper,
        "level": e.level,
        "decisions": replayed.decisions,
        "kept": replayed.kept,
        "kept_slots": replayed.kept_slots,
        "updates": replayed.updates,
        "curve": [list(point) for point in replayed.curve],
    }


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _bench(args: argparse.Namespace) -> None:
    from server import bench
    from server.settings import load_settings

    for option, pids in (("--server-pid", args.server_pid or []), ("--worker-pid", [args.worker_pid])):
        for pid in pids:
            if pid is not None and args.target is None:
                raise ValueError(f"{option} needs --target (the CPU of processes bench starts itself is known)")
    if args.server_pid and len(args.server_pid) != args.workers:
        raise ValueError(
            f"--server-pid names {len(args.server_pid)} processes, --workers says the target runs {args.workers}: "
            "give every serving process's pid (not the pid of a scout serve --workers parent)"
        )
    if args.target is not None:
        bench.check_pids(args.target, args.server_pid or (), args.worker_pid)
    channels = args.channels if args.channels is not None else 1 if args.workers == 1 else 4 * args.workers
    settings = load_settings(args.config)
    index = args.index if args.index is not None else settings.index
    experiment = settings.experiment_for(args.surface)
    context_keys = experiment.context_keys if experiment is not None else ()
    base = bench.LoadSpec(
        duration_s=args.duration,
        warmup_s=args.warmup,
        reward_share=args.reward_share,
        num_items=args.num_items,
        surface=args.surface,
        context_keys=context_keys,
        seed=args.seed,
        token=args.token,
        channels=channels,
    )
    specs = [replace(base, concurrency=c) for c in args.concurrency] + [replace(base, rate=r) for r in args.rate]
    if not specs:
        raise ValueError("give at least one --concurrency or --rate level")
    item_ids = bench.catalog_item_ids(index)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scout-bench-") as workdir:
        stop = functools.partial(_terminated, Path(workdir))
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            servers: contextlib.AbstractContextManager[tuple[str, tuple[int, ...], int | None]]
            if args.target is None:
                log.info("starting Redis, %d scout serve and scout worker (index %s)", args.workers, index)
                servers = bench.scout_processes(args.config, args.index, Path(workdir), args.workers)
            else:
                servers = contextlib.nullcontext((args.target, tuple(args.server_pid or ()), args.worker_pid))
            with servers as (target, pids, worker):
                results = bench.compare(
                    target, specs, item_ids, pids, not args.no_echo, not args.no_progress, worker, args.workers
                )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print(bench.table(results))
    for path in bench.save(results, args.out, bench.machine()):
        print(f"wrote {path}")


def _terminated(workdir: Path, signum: int, _frame: object) -> None:
    """SIGTERM or Ctrl-C during ``scout bench``: stop every process it started, remove its directory, exit.

    It exits from here rather than unwinding: an exception raised inside a blocking gRPC call (the health checks
    that wait for the servers) can leave the interpreter waiting forever on the call's state at exit.
    """
    import psutil

    log.error("interrupted: stopping the processes bench started")

    def redis(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "redis" in process.name()
        return False

    children = psutil.Process().children(recursive=True)
    for group in ([c for c in children if not redis(c)], [c for c in children if redis(c)]):  # Redis last
        for child in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(group, timeout=30)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    shutil.rmtree(workdir, ignore_errors=True)
    logging.shutdown()
    os._exit(128 + signum)


COMMANDS = {
    "bench": _bench,
    "demo": _demo,
    "world": _world,
    "build": _build,
    "train-tower": _train_tower,
    "serve": _serve,
    "worker": _worker,
    "reload-index": _reload_index,
    "evaluate": _evaluate,
    "evaluate-external": _evaluate_external,
}

if __name__ == "__main__":
    sys.exit(main())
