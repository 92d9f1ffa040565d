"""`scout evaluate` compares candidates on the same logs: ranking, gate, emerging metrics, JSON and HTML."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from test_estimators import as_log, fitted, simulate

from bandits.epsilon_greedy import EpsilonGreedy
from embeddings.index import IndexArtifact
from offline_eval.comparison import Candidate, compare
from offline_eval.logs import records_to_table
from offline_eval.world import SyntheticWorld
from server.cli import main


@pytest.fixture(scope="module")
def logged(world: SyntheticWorld, index: IndexArtifact) -> tuple[list[dict], EpsilonGreedy]:
    logger = fitted(world, index, epsilon=0.6, n=400, seed=71)
    return simulate(world, index, logger, 600, seed=72, num_items=(1, 3)), logger


def test_compare_ranks_gates_and_measures_emerging_exposure(
    world: SyntheticWorld, index: IndexArtifact, logged: tuple[list[dict], EpsilonGreedy]
) -> None:
    records, logger = logged
    log = as_log(records)
    better = EpsilonGreedy.from_bytes(logger.to_bytes(), {"epsilon": 0.1})
    uniform = EpsilonGreedy.from_bytes(logger.to_bytes(), {"epsilon": 1.0})
    result = compare(log, index, [Candidate("uniform", uniform), Candidate("greedier", better)])
    same = compare(log, index, [Candidate("logger", logger)])
    # The logging policy as a candidate cannot beat itself: its estimate is the logged mean.
    assert same.candidates[0].primary.value == pytest.approx(same.logging.value, abs=0.02)
    assert not same.candidates[0].beats_logging
    assert [r.rank for r in result.candidates] == [1, 2]
    assert result.primary == "dr"
    top, bottom = result.candidates
    assert top.primary.value >= bottom.primary.value
    for r in result.candidates:
        assert r.primary.estimator == "dr"
        expected = r.primary.lower > result.logging.value and not r.evaluation.diagnostics.warnings
        assert r.beats_logging == expected
    # The logging policy's emerging share is what was served.
    served = np.concatenate([r["emerging"] for r in records])
    assert result.logging_emerging.exposure_share == pytest.approx(served.mean())
    for r in result.candidates:
        assert 0.0 <= r.emerging.exposure_share <= 1.0 and 0.0 <= r.emerging.exposure_gini <= 1.0
        assert r.emerging.distinct_creators > 0


def test_the_uniform_policy_spreads_exposure_more_evenly_than_a_greedy_one(
    world: SyntheticWorld, index: IndexArtifact, logged: tuple[list[dict], EpsilonGreedy]
) -> None:
    records, logger = logged
    greedy = EpsilonGreedy.from_bytes(logger.to_bytes(), {"epsilon": 0.0})
    uniform = EpsilonGreedy.from_bytes(logger.to_bytes(), {"epsilon": 1.0})
    result = compare(as_log(records), index, [Candidate("greedy", greedy), Candidate("uniform", uniform)])
    by_name = {r.name: r.emerging for r in result.candidates}
    assert by_name["uniform"].exposure_gini < by_name["greedy"].exposure_gini


def test_cli_compares_snapshots_and_writes_json_and_html(
    index_dir: Path, logged: tuple[list[dict], EpsilonGreedy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, logger = logged
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(records_to_table(records), logs / "part-0.parquet")
    (tmp_path / "a.npz").write_bytes(EpsilonGreedy.from_bytes(logger.to_bytes(), {"epsilon": 0.1}).to_bytes())
    (tmp_path / "b.npz").write_bytes(logger.to_bytes())
    (tmp_path / "more.toml").write_text(
        '[[candidate]]\nname = "explorer"\nsnapshot = "b.npz"\nparams = {epsilon = 1.0}\n'
    )
    html = tmp_path / "report.html"
    argv = ["evaluate", "--logs", str(logs), "--index", str(index_dir), "--snapshot", f"greedier={tmp_path / 'a.npz'}"]
    argv += ["--snapshot", str(tmp_path / "b.npz"), "--candidates", str(tmp_path / "more.toml")]
    argv += ["--estimators", "ips,snips,dr", "--json", "--html", str(html), "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in out["candidates"]]
    assert sorted(names) == ["b", "explorer", "greedier"]
    assert [c["rank"] for c in out["candidates"]] == [1, 2, 3]
    assert all(isinstance(c["beats_logging"], bool) for c in out["candidates"])
    logged_policy = next(c for c in out["candidates"] if c["name"] == "b")
    snips = next(e for e in logged_policy["estimates"] if e["estimator"] == "snips")
    assert snips["value"] == pytest.approx(out["logging"]["value"])  # the logging policy as target: exact
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "greedier" in page
    assert main([*argv[:-4], "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "beats logging" in table and "(logging policy)" in table
    # --learning: each candidate also replayed as an online learner (its accuracy: test_learning_replay.py).
    assert main([*argv, "--learning", "--learn-every", "100"]) == 0
    captured = capsys.readouterr()
    assert "learning replay" not in captured.err  # --no-progress holds for its bar too
    out = json.loads(captured.out)
    learned = {r["name"]: r for r in out["learning_replay"]}
    assert sorted(learned) == ["b", "explorer", "greedier"]
    for r in learned.values():
        assert r["decisions"] == len(records) and 0 < r["kept"] < len(records) and r["updates"] > 0
        assert r["lower"] <= r["value"] <= r["upper"] and r["curve"][-1][1] == pytest.approx(r["value"])


def test_cli_since_keeps_the_decisions_made_from_that_time_on(
    index_dir: Path, logged: tuple[list[dict], EpsilonGreedy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, logger = logged
    start = 1_790_000_000_000  # 2026-09-21T14:13:20Z
    logs = tmp_path / "logs"
    logs.mkdir()
    dated = [r | {"decided_at": start + 1000 * i, "joined_at": start + 1000 * i + 5} for i, r in enumerate(records)]
    pq.write_table(records_to_table(dated), logs / "part-0.parquet")
    (tmp_path / "b.npz").write_bytes(logger.to_bytes())
    argv = ["evaluate", "--logs", str(logs), "--index", str(index_dir), "--snapshot", str(tmp_path / "b.npz")]
    argv += ["--json", "--no-progress"]
    # Naive times are UTC; a fraction of a millisecond rounds up, so nothing made before TIME is kept.
    times = ("2026-09-21T14:20:00Z", "2026-09-21T16:20:00+02:00", "2026-09-21 14:19:59.9995")
    for since in (str(start + 1000 * 400), *times):
        assert main([*argv, "--since", since]) == 0
        assert json.loads(capsys.readouterr().out)["decisions"] == len(records) - 400, since
    assert main([*argv, "--since", str(start + 1000 * len(records))]) == 2
    assert "--since 2026-09-21T14:23:20.000+00:00: no decisions made at or after it" in capsys.readouterr().err
    for bad in ("yesterday", str(start // 1000)):  # epoch seconds are refused, not read as milliseconds of 1970
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--since", bad])
        assert exc.value.code == 2
        assert f"--since: expected an ISO 8601 time or milliseconds since the epoch (13 digits), got '{bad}'" in (
            capsys.readouterr().err
        )


@pytest.mark.redis
def test_cli_evaluates_a_served_variant_fetched_from_redis_by_name(
    index_dir: Path,
    logged: tuple[list[dict], EpsilonGreedy],
    tmp_path: Path,
    clean_redis: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records, logger = logged
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(records_to_table(records), logs / "part-0.parquet")
    client = redis.Redis.from_url(clean_redis)
    client.hset("{scout}:policy:home-ranking:control", mapping={"version": 7, "state": logger.to_bytes()})
    client.close()
    argv = ["evaluate", "--logs", str(logs), "--index", str(index_dir), "--served", "home-ranking/control"]
    argv += ["--redis-url", clean_redis, "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (served,) = out["candidates"]
    assert served["name"] == "home-ranking/control"
    snips = next(e for e in served["estimates"] if e["estimator"] == "snips")
    assert snips["value"] == pytest.approx(out["logging"]["value"])  # the snapshot that logged these decisions
    missing = ["evaluate", "--logs", str(logs), "--index", str(index_dir), "--served", "home-ranking/nobody"]
    assert main([*missing, "--redis-url", clean_redis]) == 2
    assert "no snapshot under {scout}:policy:home-ranking:nobody" in capsys.readouterr().err
