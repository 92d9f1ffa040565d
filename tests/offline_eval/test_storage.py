"""Logs named by URI: the readers go through pyarrow's filesystems, so a file:// URI reads what its path reads.

Cloud schemes (gs://, s3://) take the same code path with another pyarrow filesystem; no cloud is reachable here,
so they are not exercised.
"""

from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from factorized_slates import sample, slate_world
from test_estimators import simulate
from test_external_log import to_rows

from bandits.epsilon_greedy import EpsilonGreedy
from bandits.features import feature_dim
from embeddings.index import IndexArtifact
from offline_eval.estimators import create_estimators
from offline_eval.external_log import log_files, read_file
from offline_eval.logs import LogError, read_logs, records_to_table
from offline_eval.streaming import evaluate_external
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld


def test_external_logs_by_file_uri_equal_the_same_files_by_path(tmp_path: Path) -> None:
    table = to_rows(sample(slate_world(seed=31), 1_500, seed=32))
    cut = int((table.column("round").to_numpy() < 900).sum())
    (tmp_path / "day=1").mkdir()
    pq.write_table(table.slice(0, cut), tmp_path / "day=1" / "a.parquet")
    pcsv.write_csv(table.slice(cut), tmp_path / "b.csv")
    uri = f"file://{tmp_path}"
    files = log_files(uri)
    assert files == [f"file://{tmp_path}/b.csv", f"file://{tmp_path}/day=1/a.parquet"]
    assert sum(b.data.n for b in read_file(files[1], 1, 256, 3)) == 900  # what a Beam worker reads
    names = create_estimators(["ips", "snips", "dr"])
    by_uri, by_path = evaluate_external(uri, names, batch_size=500), evaluate_external(tmp_path, names, batch_size=500)
    assert [e.value for e in by_uri.estimates] == [e.value for e in by_path.estimates]


def test_scout_logs_by_file_uri_and_bad_locations_name_the_location(
    world: SyntheticWorld, index: IndexArtifact, tmp_path: Path
) -> None:
    records = simulate(world, index, EpsilonGreedy(feature_dim(index.dim, len(CONTEXT_KEYS)), epsilon=1.0), 12, 71)
    pq.write_table(records_to_table(records[:5]), tmp_path / "part-1.parquet")
    pq.write_table(records_to_table(records[5:]), tmp_path / "part-2.parquet")
    by_uri, by_path = read_logs(f"file://{tmp_path}"), read_logs(tmp_path)
    assert len(by_uri) == 12 and by_uri["event_id"] == by_path["event_id"]
    assert np.array_equal(np.concatenate(by_uri["rewards"]), np.concatenate(by_path["rewards"]))
    with pytest.raises(LogError, match=r"nosuch://bucket/logs: cannot open this location"):
        read_logs("nosuch://bucket/logs")
    with pytest.raises(LogError, match=r"missing: no such file or directory"):
        read_logs(f"file://{tmp_path}/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogError, match=r"empty: no \.parquet files"):
        read_logs(tmp_path / "empty")
