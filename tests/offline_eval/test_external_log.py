"""External bandit logs: layout, validation errors naming file/column/row, streaming equal to in-memory."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from factorized_slates import sample, slate_world

from offline_eval.base import SlateData
from offline_eval.estimators import create_estimators
from offline_eval.evaluation import evaluate_data
from offline_eval.external_log import ACTION_FREE_FALLBACK, ACTION_FREE_MODEL, read_external
from offline_eval.logs import LogError
from offline_eval.reward_model import cross_fit
from offline_eval.streaming import evaluate_external, in_memory


def to_rows(data: SlateData, seed: int = 0) -> pa.Table:
    """One row per served slot, with a context feature that predicts the reward a little."""
    rounds, positions = np.nonzero(data.mask)
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "round": rounds.astype(np.int64),
            "position": positions.astype(np.int64),
            "action": data.logged_features[rounds, positions].argmax(axis=1).astype(np.int64),
            "reward": data.reward[rounds, positions],
            "propensity": data.logged_propensity[rounds, positions],
            "target_propensity": data.target_propensity[rounds, positions],
            "x_slot": positions.astype(np.float64),
            "x_noise": rng.normal(size=len(rounds)),
        }
    )


def test_streaming_in_small_batches_equals_the_in_memory_path(tmp_path: Path) -> None:
    world = slate_world(seed=21)
    table = to_rows(sample(world, 4_000, seed=22))
    cut = int((table.column("round").to_numpy() < 2500).sum())  # files hold whole rounds
    pq.write_table(table.slice(0, cut), tmp_path / "a.parquet")
    pcsv.write_csv(table.slice(cut), tmp_path / "b.csv")
    batches = list(read_external(tmp_path, batch_size=777))
    assert len(batches) > 5
    data = in_memory(batches)
    assert data.n == 4_000 and data.slots == 3
    names = ["ips", "snips", "dr", "sndr", "slate_ips", "pseudo_inverse"]
    streamed = evaluate_external(tmp_path, create_estimators(names), batch_size=777)
    rows = np.concatenate([np.arange(b.first_round, b.first_round + b.data.n) for b in batches])
    assert rows[-1] > 1 << 40  # the second file's rounds
    whole = evaluate_data(data, create_estimators(names), predictions=cross_fit(data, rows=rows))
    for s, w in zip(streamed.estimates, whole.estimates, strict=True):
        assert s.value == pytest.approx(w.value, rel=1e-9), s
        assert s.std_error == pytest.approx(w.std_error, rel=1e-6), s
        assert s.lower <= world.truth <= s.upper, (s, world.truth)
    assert streamed.diagnostics.ess_per_slot == pytest.approx(whole.diagnostics.ess_per_slot)
    flagged = evaluate_external(tmp_path, create_estimators(["dm", "switch_dr", "dros", "dr", "sndr"]), batch_size=777)
    assert [ACTION_FREE_MODEL in e.flags for e in flagged.estimates] == [True, False, False, False, False]
    assert [ACTION_FREE_FALLBACK in e.flags for e in flagged.estimates] == [False, True, True, False, False]
    by_name = evaluate_external(tmp_path, ["dm", "switch_dr", "dros", "dr", "sndr"], batch_size=777)
    assert by_name == flagged  # names work as the estimators do
    assert evaluate_external(tmp_path, "dm", batch_size=777).estimates == flagged.estimates[:1]  # one name
    boot = evaluate_external(tmp_path, create_estimators(["ips"]), batch_size=777, bootstrap=100)
    assert boot.estimates[0].interval == "bootstrap(100)"
    assert boot.estimates[0].lower < boot.estimates[0].value < boot.estimates[0].upper


def write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_bad_data_names_the_file_column_and_first_bad_row(tmp_path: Path, suffix: str) -> None:
    table = to_rows(sample(slate_world(seed=23), 50, seed=24))

    def with_column(name: str, row: int, value: float, dtype: type | None = None) -> pa.Table:
        values = table.column(name).to_numpy().astype(dtype or table.column(name).to_numpy().dtype)
        values[row] = value
        return table.set_column(table.schema.get_field_index(name), name, pa.array(values))

    positions = table.column("position").to_numpy()
    second = int(np.flatnonzero(positions[10:] == 1)[0]) + 10  # a round's second row, in the third batch or later
    cases = [
        (
            with_column("position", second, 2),
            rf"column position: row {second} has position 2; a round's rows must hold positions 0, 1, ...",
        ),
        (
            table.drop(["round"]),
            rf"column position: row {int(np.argmax(positions > 0))} has position 1; without a round column every row",
        ),
        (
            table.drop(["position"]),
            rf"column round: row {int(np.argmax(positions > 0))} continues a round, but there is no position column",
        ),
        (with_column("propensity", 7, 0.0), r"column propensity: row 7 is outside \(0, 1\] \(0\.0\)$"),
        (with_column("position", 11, 1.5, float), r"column position: row 11 is not a whole number >= 0 \(1\.5\)"),
        (with_column("position", 13, np.inf, float), r"column position: row 13 is not a whole number >= 0 \(inf\)"),
        (with_column("propensity", 9, 1.5), r"column propensity: row 9 is outside \(0, 1\]"),
        (with_column("reward", 4, float("nan")), r"column reward: row 4 is missing or not finite"),
        (with_column("target_propensity", 3, -0.1), r"column target_propensity: row 3 is outside \[0, 1\]"),
        (table.drop(["reward"]), r"missing column\(s\) reward"),
        (table.drop(["target_propensity"]), r"missing column target_propensity"),
    ]
    if suffix == ".parquet":  # (a CSV's round column is text: "nan" there is an id like any other)
        cases.append(
            (with_column("round", 10, np.nan, float), r"column round: row 10 is missing or not finite \(nan\)")
        )
    for i, (bad, message) in enumerate(cases):
        path = write(bad, tmp_path / f"bad{i}{suffix}")
        with pytest.raises(LogError, match=rf"bad{i}\{suffix}: {message}"):
            list(read_external(path, batch_size=4))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_ids_may_be_strings_or_64_bit_integers(tmp_path: Path, suffix: str) -> None:
    """Ids compared as given: as floats, 2**60 and 2**60 + 1 were one round; strings were refused as not numeric, and
    in a CSV whose first block held numeric-looking ids, later text ids failed to convert."""
    base = to_rows(sample(slate_world(seed=25), 1500, seed=26))
    rounds = base.column("round").to_numpy()
    expected = in_memory(list(read_external(write(base, tmp_path / f"int{suffix}"), batch_size=64)))
    late_text = np.array([str(r) if r < 1200 else f"s{r}" for r in rounds])  # CSV: a numeric-looking first block
    ids_by_label = {"big": rounds + 2**60, "str": np.array([f"session-{r:05d}" for r in rounds]), "mix": late_text}
    for label, ids in ids_by_label.items():
        table = base.set_column(base.schema.get_field_index("round"), "round", pa.array(ids))
        got = in_memory(list(read_external(write(table, tmp_path / f"{label}{suffix}"), batch_size=64)))
        assert got.n == expected.n == 1500, label
        np.testing.assert_array_equal(got.mask, expected.mask)
        np.testing.assert_array_equal(got.reward, expected.reward)
