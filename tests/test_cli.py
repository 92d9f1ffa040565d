import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import COMMANDS, main


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "server.cli", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: scout" in result.stdout


def test_world_build_and_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "--out", str(tmp_path / "c.parquet"), "--items", "300"]) == 0
    assert main(["build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "idx"), "--dim", "8"]) == 0
    assert '"count": 300' in capsys.readouterr().out
    assert main(["build", "--catalog", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "x")]) == 2
    # --m had a default, so an IVF build took --m 64 and said nothing; the error names the flags, not the fields
    wrong = ["build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "x"), "--index-type", "flat"]
    capsys.readouterr()
    assert main([*wrong, "--m", "64"]) == 2
    assert "--m applies to --index-type hnsw only, got 'flat'" in capsys.readouterr().err
    assert main([*wrong, "--pq-bits", "4"]) == 2
    assert "--pq-bits applies to --index-type ivf_pq only, got 'flat'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["evaluate", "--logs", str(tmp_path), "--index", str(tmp_path / "idx"), "--policy", "linucb"]) == 2
    # The demo's target learns from half of the requests and is evaluated on the other half.
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--decisions", "1", "--dir", str(tmp_path / "demo")])
    assert refused.value.code == 2 and "--decisions: must be an integer in 2.." in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
    # The demo clears its directory first: one holding anything else is refused, and left as it was.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["demo", "--decisions", "2", "--dir", str(tmp_path / "mine")]) == 2
    assert "holds notes.txt, which the demo did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


BIG = str(10**12)


@pytest.mark.parametrize(
    "argv",
    [
        # Each ran on before: a traceback (out of memory, an overflow in FAISS or pyarrow, a negative seed), a
        # message not naming the flag, a hang, or hundreds of processes.
        ["world", "--items", BIG],
        ["world", "--items", "0"],
        ["world", "--seed", "-1"],
        ["demo", "--concurrency", "0"],
        ["demo", "--items", BIG],
        ["demo", "--decisions", BIG],
        ["build", "--dim", BIG],
        ["build", "--m", BIG],
        ["build", "--ef-construction", BIG],
        ["build", "--ef-search", BIG],
        ["build", "--rerank", BIG],
        ["build", "--nprobe", BIG],
        ["build", "--seed", "-1"],
        ["train-tower", "--epochs", BIG],
        ["train-tower", "--workers", BIG],
        ["train-tower", "--synthetic-seed", "-1"],
        ["serve", "--workers", BIG],
        ["worker", "--metrics-port", "70000"],
        ["bench", "--concurrency", "1", BIG],
        ["bench", "--rate", BIG],
        ["bench", "--duration", "inf"],
        ["bench", "--warmup", "nan"],
        ["bench", "--num-items", BIG],
        ["bench", "--server-pid", BIG],
        ["bench", "--seed", "-1"],
        ["evaluate", "--bootstrap", BIG],
        ["evaluate", "--seed", "-1"],
        ["evaluate", "--level", "inf"],
        ["evaluate", "--learn-every", "0"],
        ["evaluate", "--generation", "-1"],
        ["evaluate-external", "--batch-size", BIG],
        ["evaluate-external", "--reward-range", "nan", "1"],
        ["evaluate-external", "--level", "1"],
    ],
    ids=" ".join,
)
def test_numeric_options_out_of_range_are_refused_naming_the_flag(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and f"argument {argv[1]}: must be " in err, err


def test_demo_config_checks_its_fields(tmp_path: Path) -> None:
    from server.demo import DemoConfig

    for field, value in (("decisions", 1), ("items", 0), ("concurrency", 0), ("seed", -1)):
        with pytest.raises(ValueError, match=f"{field} must be at least"):
            DemoConfig(tmp_path, **{field: value})  # concurrency 0 waited 80 s for decisions never made
    with pytest.raises(ValueError, match="reward_window_s must be positive"):
        DemoConfig(tmp_path, reward_window_s=0.0)


def test_build_chooses_index_type_caches_text_and_publishes_versions(tmp_path: Path) -> None:
    import json

    from embeddings.index import IndexArtifact

    assert main(["world", "--out", str(tmp_path / "c.parquet"), "--items", "2000"]) == 0
    args = ["build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "idx"), "--dim", "16"]
    extra = ["--index-type", "hnsw", "--m", "16", "--text-cache", str(tmp_path / "cache"), "--publish"]
    assert main([*args, *extra]) == 0
    artifact = IndexArtifact.load(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / artifact.version / "manifest.json").read_text())
    assert manifest["index_type"] == "hnsw" and manifest["index"]["recall"]["value"] >= 0.95
    assert manifest["build_params"]["text_cache"]["misses"] > 0
    assert (tmp_path / "cache" / "hashed-1024.npz").is_file()


def test_reload_index_points_current_at_a_published_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embeddings.index import IndexArtifact

    assert main(["world", "--out", str(tmp_path / "c.parquet"), "--items", "300"]) == 0
    build = ["build", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "root"), "--dim", "8"]
    assert main([*build, "--publish"]) == 0
    first = IndexArtifact.current_version(tmp_path / "root")
    assert main([*build, "--publish", "--seed", "2"]) == 0
    second = IndexArtifact.current_version(tmp_path / "root")
    assert second != first
    assert main(["reload-index", "--index", str(tmp_path / "root"), "--version", first]) == 0
    assert IndexArtifact.current_version(tmp_path / "root") == first
    assert main(["reload-index", "--index", str(tmp_path / "root"), "--version", "nope"]) == 2
    capsys.readouterr()
    assert main(["reload-index", "--index", str(tmp_path / "root")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted([f"* {first}", f"  {second}"])


def test_evaluate_external_prints_the_streaming_estimates_flags_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import pyarrow.parquet as pq

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "offline_eval"))
    from factorized_slates import sample, slate_world
    from test_external_log import to_rows

    from offline_eval.estimators import create_estimators
    from offline_eval.streaming import evaluate_external

    pq.write_table(to_rows(sample(slate_world(seed=41), 2_000, seed=42)), tmp_path / "log.parquet")
    args = ["evaluate-external", "--logs", str(tmp_path / "log.parquet"), "--estimators", "ips,dm", "--no-progress"]
    assert main([*args, "--json", "--bootstrap", "20", "--seed", "3"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = evaluate_external(tmp_path / "log.parquet", create_estimators(["ips", "dm"]), bootstrap=20, seed=3)
    assert [e["value"] for e in got["estimates"]] == [e.value for e in want.estimates]
    assert got["diagnostics"]["n"] == 2_000 and got["estimates"][1]["flags"] == list(want.estimates[1].flags)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("2000 rounds; effective sample size") and "\n! dm: the logs give only" in table
    assert main(["evaluate-external", "--logs", str(tmp_path / "none.csv")]) == 2
    assert main([*args, "--reward-range", "1", "0"]) == 2
    assert main([*args, "--estimators", "ips,nope"]) == 2
    for bad in (["--level", "1.5"], ["--bootstrap", "-1"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as refused:
            main([*args, *bad])
        assert refused.value.code == 2 and f"argument {bad[0]}: must be" in capsys.readouterr().err


def test_flag_lines_name_each_reason_once_with_its_estimators() -> None:
    from offline_eval.base import Estimate
    from offline_eval.report import flag_lines, format_estimates

    def estimate(name: str, *flags: str) -> Estimate:
        return Estimate(name, 0.5, 0.4, 0.6, 0.95, 100, "normal", 0.05, flags)

    rows = [estimate("ips", "thin"), estimate("snips"), estimate("dr", "thin", "odd")]
    assert flag_lines(rows) == ["! ips, dr: thin", "! dr: odd"]
    assert [line.endswith("  !") for line in format_estimates(rows).splitlines()[1:]] == [True, False, True]
    assert "99.9% interval" in format_estimates(rows, level=0.999)  # it said 100%
    assert "0.5000   [0.4000, 0.6000]" in format_estimates(rows)  # four decimals, as scout evaluate prints
    click = Estimate("ips", 0.00236, 0.00102, 0.00445, 0.95, 100, "normal", 0.001, ())
    assert "0.00236   [0.00102, 0.00445]" in format_estimates([click])  # not 0.0024 [0.0010, 0.0045]


def test_json_output_has_no_bare_nan() -> None:
    from offline_eval.summary import finite_json

    nan, inf = float("nan"), float("inf")
    assert finite_json({"a": [1.0, nan], "b": (inf, "x"), "c": {"d": -inf}}) == {
        "a": [1.0, None],
        "b": [None, "x"],
        "c": {"d": None},
    }


def test_a_command_that_cannot_reach_redis_says_so_in_one_line(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fault injection: a scout worker started while Redis was down exited with a redis-py traceback
    monkeypatch.setenv("SCOUT_REDIS_URL", f"unix://{tmp_path / 'no-redis.sock'}")
    assert main(["worker", "--index", str(index_dir)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis: " in err and "no-redis.sock" in err and "Traceback" not in err
