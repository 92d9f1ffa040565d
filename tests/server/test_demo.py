"""The demo finishes whatever the load (late rewards are counted, not fatal), is seeded end to end, and keeps the
library loggers quiet over its progress bars (real embedded Redis, real gRPC, real FAISS)."""

import asyncio
import logging
import re
from pathlib import Path

import pytest

from offline_eval.logs import read_logs
from server.demo import DemoConfig, demo_world, run_demo, simulated_rng

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def run(config: DemoConfig, capsys: pytest.CaptureFixture[str]) -> tuple[int, int, list[tuple]]:
    """Run the demo; returns clicks, late clicks and the logged (event, unit, seeds, context) rows.

    Checks that the target is evaluated on exactly the control variant's decisions of the second half of the
    requests (the target is the model as it stood before them): an estimate on its own training decisions is
    optimistic.
    """
    assert asyncio.run(run_demo(config)) == 0
    out = capsys.readouterr().out
    evaluated = re.search(r"estimated from the (\d+) decisions the control variant logged after it", out)
    assert evaluated, out
    found = re.search(r"(\d+) decisions served, (\d+) clicks rewarded, (\d+) of them late", out)
    assert found, out
    assert int(found.group(1)) == config.decisions
    log = read_logs(config.directory / "logs")
    rows = sorted(
        zip(
            log["event_id"],
            log["unit_id"],
            map(tuple, log["seed_item_ids"]),
            map(tuple, log["context_values"]),
            strict=True,
        )
    )
    world = demo_world(config)
    second_half: set[tuple[str, tuple[str, ...]]] = set()
    for i in range(config.decisions // 2, config.decisions):
        request = world.sample_request(simulated_rng(config, i))
        second_half.add((request.unit_id, tuple(request.seed_item_ids)))
    held_out = [
        (unit, tuple(seeds)) in second_half and variant == "control"
        for unit, seeds, variant in zip(log["unit_id"], log["seed_item_ids"], log["variant"], strict=True)
    ]
    assert 0 < sum(held_out) < sum(v == "control" for v in log["variant"])
    assert int(evaluated.group(1)) == sum(held_out)
    clicks, late = int(found.group(2)), int(found.group(3))
    observed = sum(sum(flags) for flags in log["reward_observed"])
    assert observed == clicks - late, "every click on time is in its row; every late one is counted apart"
    return clicks, late, rows


def test_demo_counts_late_rewards_is_seeded_and_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    small = {"decisions": 120, "items": 500, "seed": 3}
    clicks, _, on_time = run(DemoConfig(tmp_path / "a", concurrency=1, reward_window_s=1.0, **small), capsys)
    assert clicks > 0
    # Users who click after the window has closed: rewards come back late, and the demo still finishes.
    config = DemoConfig(tmp_path / "b", concurrency=3, reward_window_s=0.05, click_delay_s=0.5, **small)
    _, late_b, delayed = run(config, capsys)
    assert late_b > 0
    # Same seed, other concurrency and timing: the same requests under the same event ids.
    assert {r[0] for r in on_time} == {r[0] for r in delayed}
    assert sorted(r[1:] for r in on_time) == sorted(r[1:] for r in delayed)
    noisy = [r for r in caplog.records if r.levelno < logging.WARNING and r.name.split(".")[0] in ("server", "faiss")]
    assert not noisy, [r.getMessage() for r in noisy[:5]]
