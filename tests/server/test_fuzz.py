"""Fuzz: 10,500 seeded malformed requests against a real server on port 0 (real Redis, FAISS, policies).

Strings of every size up to the 4 MB transport limit (ASCII, unicode, control characters), huge, negative, NaN and
infinite numbers, oversized lists and maps, unknown context keys and unknown protobuf fields, and garbage,
truncated or bit-flipped bytes sent raw through a generic channel method. Every answer must be OK or
INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION with a short message that starts with the field it is about;
never INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED below the transport limit; and health is SERVING afterwards.
"""

import asyncio
import logging
import math
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.pb import scout_pb2

pytestmark = [pytest.mark.redis, pytest.mark.slow]
log = logging.getLogger(__name__)

REQUESTS = 10_500
CONCURRENCY = 32
SEED = 20261122
TRANSPORT_LIMIT = 4 * 1024 * 1024  # gRPC's default receive limit
MAX_MESSAGE = 4096
FIELDS = (
    "unit_id",
    "surface",
    "num_items",
    "context",
    "seed_item_ids",
    "exclude_item_ids",
    "event_id",
    "item_id",
    "value",
    "request",
)
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
NUMBERS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 1e6, 1e6 + 1, -1e6, -0.0, 5e-324, 1e200, 0.5, 1.0)
INTS = (-(2**31), -1, 0, 1, 3, 10, 11, 2**31 - 1)
WORDS = ("home", "attic", "mobile", "evening", "item-0000001", "user-000001", "x\n")
LIST_SIZES = (0, 0, 0, 0, 1, 2, 3, 3, 999, 1000, 1001, 3000)
ITEM_IDS = [f"item-{k:07d}" for k in range(4000)]
BIG_SHARE = 0.005
BIG_FIELDS = {
    "Recommend": ("unit_id", "surface", "context", "seed_item_ids", "exclude_item_ids"),
    "Reward": ("event_id", "item_id"),
}


class Fuzzer:
    """Request ``i`` is a function of ``(SEED, i)`` alone, whatever the interleaving."""

    def __init__(self, event_ids: list[str]) -> None:
        self.event_ids = event_ids

    def text(self, rng: np.random.Generator, max_size: int = 3000) -> str:
        kind = rng.integers(10)
        size = min(max_size, int(10 ** rng.uniform(0, 3.5)))
        if kind in (0, 1):
            return ""
        if kind == 2:  # control characters
            return rng.integers(0, 32, size, dtype=np.uint8).tobytes().decode("ascii")
        if kind == 3:  # any unicode scalar value (no surrogates)
            points = rng.integers(0x80, 0x10FFFF, size, dtype=np.uint32)
            return points[(points < 0xD800) | (points > 0xDFFF)].astype("<u4").tobytes().decode("utf-32-le")
        if kind == 4:
            return WORDS[int(rng.integers(len(WORDS)))]
        if kind == 5:
            return f"item-{int(rng.integers(0, 4000)):07d}"
        return rng.integers(33, 127, size, dtype=np.uint8).tobytes().decode("ascii")

    def number(self, rng: np.random.Generator) -> float:
        if rng.random() < 0.6:
            return NUMBERS[int(rng.integers(len(NUMBERS)))]
        return float(rng.normal() * 10.0 ** int(rng.integers(-300, 300)))

    def ids(self, rng: np.random.Generator) -> list[str]:
        size = LIST_SIZES[int(rng.integers(len(LIST_SIZES)))]
        if size > 5:  # long lists: real item ids, or one random text made distinct
            if rng.random() < 0.5:
                return [ITEM_IDS[k] for k in rng.integers(0, len(ITEM_IDS), size).tolist()]
            base = self.text(rng, 50)
            return [f"{base}{k}" for k in range(size)]
        return [self.text(rng) for _ in range(size)]

    def recommend(self, rng: np.random.Generator) -> scout_pb2.RecommendRequest:
        sane = rng.random() < 0.3
        request = scout_pb2.RecommendRequest(
            unit_id=f"user-{int(rng.integers(0, 300)):06d}" if sane or rng.random() < 0.5 else self.text(rng),
            surface="home" if sane or rng.random() < 0.5 else self.text(rng),
            num_items=int(rng.integers(1, 11)) if sane or rng.random() < 0.4 else INTS[int(rng.integers(len(INTS)))],
        )
        for _ in range((0, 1, 2, 3, 65, 100)[int(rng.integers(6))]):
            key = ("mobile", "evening")[int(rng.integers(2))] if rng.random() < 0.5 else self.text(rng, 200)
            request.context[key] = float(rng.integers(0, 2)) if sane else self.number(rng)
        if not sane:
            request.seed_item_ids.extend(self.ids(rng))
            request.exclude_item_ids.extend(self.ids(rng))
        return request

    def reward(self, rng: np.random.Generator) -> scout_pb2.RewardRequest:
        known = self.event_ids and rng.random() < 0.5
        event_id = self.event_ids[int(rng.integers(len(self.event_ids)))] if known else self.text(rng)
        item = f"item-{int(rng.integers(0, 3000)):07d}" if rng.random() < 0.5 else self.text(rng)
        return scout_pb2.RewardRequest(event_id=event_id, item_id=item, value=self.number(rng))

    def raw(self, rng: np.random.Generator, valid: bytes) -> bytes:
        kind = rng.integers(4)
        if kind == 0:  # garbage
            return rng.bytes(int(rng.integers(0, 2000)))
        if kind == 1:  # truncated
            return valid[: int(rng.integers(0, max(1, len(valid))))]
        if kind == 2:  # bit flips
            data = bytearray(valid)
            for _ in range(int(rng.integers(1, 6))):
                if data:
                    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            return bytes(data)
        field = int(rng.integers(16, 2**20))  # an unknown field (varint), which a parser must skip
        return valid + varint(field << 3) + varint(int(rng.integers(0, 2**40)))

    def request(self, i: int) -> tuple[str, bool, Any]:
        rng = np.random.default_rng([SEED, i])
        method = "Recommend" if rng.random() < 0.6 else "Reward"
        message = self.recommend(rng) if method == "Recommend" else self.reward(rng)
        if rng.random() < BIG_SHARE:  # one string of 100 KB up to the transport limit (a few just over it)
            name = str(rng.choice(BIG_FIELDS[method]))
            size = int(rng.integers(100_000, TRANSPORT_LIMIT + 100_000))
            if name.endswith("ids"):
                getattr(message, name).append("i" * size)
            elif name == "context":
                message.context["k" * size] = 1.0
            else:
                setattr(message, name, "s" * size)
        if rng.random() < 0.25:
            return method, True, self.raw(rng, message.SerializeToString())
        return method, False, message


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_fuzz_malformed_requests(scout) -> None:
    started = time.perf_counter()
    statuses, over_limit, problems = asyncio.run(fuzz(scout.target))
    elapsed = time.perf_counter() - started
    summary = f"fuzz: {REQUESTS} requests in {elapsed:.1f} s: {dict(statuses)}; over the 4 MB limit: {dict(over_limit)}"
    log.warning("%s", summary)
    print(summary)
    assert not problems, problems[:10]
    assert sum(statuses.values()) == REQUESTS
    assert statuses["RESOURCE_EXHAUSTED"] == over_limit["RESOURCE_EXHAUSTED"], "only over-limit requests"
    assert statuses["OK"] > 500 and statuses["INVALID_ARGUMENT"] > 3000 and statuses["NOT_FOUND"] > 100
    with grpc.insecure_channel(scout.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "scout.v1.Recommender"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )


async def fuzz(target: str) -> tuple[Counter[str], Counter[str], list[str]]:
    statuses: Counter[str] = Counter()
    over_limit: Counter[str] = Counter()
    problems: list[str] = []
    event_ids: list[str] = []
    fuzzer = Fuzzer(event_ids)
    options = [("grpc.max_send_message_length", 2 * TRANSPORT_LIMIT)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        typed = {
            "Recommend": channel.unary_unary(
                "/scout.v1.Recommender/Recommend",
                request_serializer=scout_pb2.RecommendRequest.SerializeToString,
                response_deserializer=scout_pb2.RecommendResponse.FromString,
            ),
            "Reward": channel.unary_unary(
                "/scout.v1.Recommender/Reward",
                request_serializer=scout_pb2.RewardRequest.SerializeToString,
                response_deserializer=scout_pb2.RewardResponse.FromString,
            ),
        }
        raw = {
            name: channel.unary_unary(
                f"/scout.v1.Recommender/{name}", request_serializer=None, response_deserializer=None
            )
            for name in typed
        }
        for _ in range(50):  # real event ids for the rewards to hit
            reply = await typed["Recommend"](scout_pb2.RecommendRequest(unit_id="seed", surface="home", num_items=3))
            event_ids.append(reply.event_id)
        queue = iter(range(REQUESTS))

        async def worker() -> None:
            for i in queue:
                method, is_raw, message = fuzzer.request(i)
                size = len(message) if is_raw else message.ByteSize()
                try:
                    reply = await (raw if is_raw else typed)[method](message, timeout=60)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    reply = None
                statuses[code.name] += 1
                where = f"request {i} ({method}, {'raw' if is_raw else 'typed'}, {size} bytes)"
                if size >= TRANSPORT_LIMIT:
                    over_limit[code.name] += 1
                    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        problems.append(f"{where}: over the transport limit but {code.name}")
                elif code not in ALLOWED:
                    problems.append(f"{where}: {code.name} {details[:200]!r}")
                elif code != grpc.StatusCode.OK and (len(details) > MAX_MESSAGE or not details.startswith(FIELDS)):
                    problems.append(f"{where}: {code.name} message {len(details)} chars: {details[:200]!r}")
                elif reply is not None and method == "Recommend" and not is_raw:
                    numbers = [x for item in reply.items for x in (item.score, item.propensity)]
                    if not all(math.isfinite(x) for x in numbers) or not all(
                        0 < i.propensity <= 1 for i in reply.items
                    ):
                        problems.append(f"{where}: non-finite or impossible numbers served: {numbers}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, over_limit, problems
