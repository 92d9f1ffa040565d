"""Config reload on a running server: new decisions only, zero failed requests, refused files change nothing."""

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import Running

from offline_eval.logs import read_logs
from server.app import start_server
from server.config_reloader import reload_problems
from server.pb import scout_pb2, scout_pb2_grpc
from server.settings import Variant, load_settings

pytestmark = pytest.mark.redis


def write(
    path: Path, index_dir: Path, redis_url: str, root: Path, weights: tuple[float, float], extra: str = ""
) -> None:
    path.write_text(
        f'redis_url = "{redis_url}"\nindex = "{index_dir}"\ndata_dir = "{root / "redis"}"\n{extra}'
        "[server]\nport = 0\nmax_num_items = 10\nrefresh_interval_s = 0.1\nconfig_watch_interval_s = 0.1\n"
        "[join]\nreward_window_s = 0.3\npoll_interval_s = 0.05\n[learner]\npoll_interval_s = 0.05\n"
        f'[export]\nlog_dir = "{root / "logs"}"\nflush_interval_s = 0.2\n'
        '[[experiments]]\nname = "home-ranking"\nsalt = "home-ranking-v1"\nsurfaces = ["home"]\n'
        'context_keys = ["mobile", "evening"]\ncandidates = 30\n'
        f'[[experiments.variants]]\nname = "control"\nweight = {weights[0]}\npolicy = "epsilon_greedy"\n'
        "params = { epsilon = 0.3 }\n"
        f'[[experiments.variants]]\nname = "linucb"\nweight = {weights[1]}\npolicy = "linucb"\n'
        "params = { alpha = 0.5 }\n"
    )


@pytest.fixture
def reloadable(index_dir: Path, clean_redis: str, tmp_path: Path):
    path = tmp_path / "scout.toml"
    write(path, index_dir, clean_redis, tmp_path, (0.5, 0.5))

    def load():
        return load_settings(path, environ={})

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_server(load(), config=(path, load)), loop).result(timeout=60)
    running = Running(server, loop)
    yield running, path
    running.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_a_reload_under_load_changes_assignment_for_new_decisions_only(reloadable, index_dir, clean_redis, tmp_path):
    running, path = reloadable
    failures: list[str] = []
    served: list[tuple[float, str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with grpc.insecure_channel(running.target) as channel:
            stub = scout_pb2_grpc.RecommenderStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                request = scout_pb2.RecommendRequest(unit_id=f"u{k}-{n}", surface="home", num_items=2)
                try:
                    served.append((time.monotonic(), stub.Recommend(request, timeout=10).variant))
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        old_version = running.server.config.version
        write(path, index_dir, clean_redis, tmp_path, (0.000001, 1.0))  # nearly every unit moves to linucb
        with grpc.insecure_channel(running.target) as channel:
            reply = scout_pb2_grpc.AdminStub(channel).ReloadConfig(scout_pb2.ReloadConfigRequest())
        switched = time.monotonic()
        assert reply.changed and reply.config_version != old_version
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    before = [v for t, v in served if t < switched - 0.5]
    after = [v for t, v in served if t > switched + 0.1]
    assert "control" in before and after and set(after) == {"linucb"}
    # The logs say which configuration made each decision: old decisions keep theirs.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            logs = read_logs(tmp_path / "logs")
            if len(logs) >= len(served):
                break
        except Exception:
            pass
        time.sleep(0.2)
    versions = dict(zip(logs["event_id"], logs["config_version"], strict=True))
    assert set(versions.values()) == {old_version, reply.config_version}
    for version, variant in zip(logs["config_version"], logs["variant"], strict=True):
        if version == reply.config_version:
            assert variant == "linucb"


def test_a_refused_config_keeps_the_old_one_and_the_file_is_watched(reloadable, index_dir, clean_redis, tmp_path):
    running, path = reloadable
    version = running.server.config.version
    with grpc.insecure_channel(running.target) as channel:
        admin = scout_pb2_grpc.AdminStub(channel)
        path.write_text(path.read_text().replace("candidates = 30", "candidates = 30\ncandidatez = 3"))
        with pytest.raises(grpc.RpcError) as info:
            admin.ReloadConfig(scout_pb2.ReloadConfigRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details()
        assert "candidatez (experiment 'home-ranking'): unknown key" in details and version in details
        write(path, index_dir, clean_redis, tmp_path, (0.5, 0.5), extra='key_prefix = "other"\n')
        with pytest.raises(grpc.RpcError) as info:
            admin.ReloadConfig(scout_pb2.ReloadConfigRequest())
        assert "key_prefix changed" in info.value.details()
        assert admin.ListExperiments(scout_pb2.ListExperimentsRequest()).config_version == version
        write(path, index_dir, clean_redis, tmp_path, (0.25, 0.75))  # no call: the watcher picks it up
        deadline = time.monotonic() + 10
        while admin.ListExperiments(scout_pb2.ListExperimentsRequest()).config_version == version:
            assert time.monotonic() < deadline, "the watcher never reloaded the changed file"
            time.sleep(0.1)
        weights = [v.weight for v in admin.ListExperiments(scout_pb2.ListExperimentsRequest()).experiments[0].variants]
        assert weights == [0.25, 0.75]


def test_what_a_reload_may_change() -> None:
    old = load_settings(environ={})
    experiment = old.experiments[0]
    grown = replace(experiment, variants=(*experiment.variants, Variant("greedy", 1.0, "epsilon_greedy")))
    assert reload_problems(old, replace(old, experiments=(grown,))) == []
    retuned = replace(experiment, variants=(replace(experiment.variants[1], params=(("alpha", 2.0),)),))
    assert "policy or params changed" in reload_problems(old, replace(old, experiments=(retuned,)))[0]
    reset = replace(experiment, variants=(replace(experiment.variants[1], params=(("alpha", 2.0),), generation=1),))
    assert reload_problems(old, replace(old, experiments=(reset,))) == []  # a new generation starts over
    rekeyed = replace(experiment, context_keys=("mobile",))
    assert "context_keys changed" in reload_problems(old, replace(old, experiments=(rekeyed,)))[0]
    moved = replace(old, server=replace(old.server, port=1234))
    assert reload_problems(old, moved) == ["server changed: only [[experiments]] reload without a restart"]


def test_reload_config_needs_a_config_file(scout) -> None:
    with grpc.insecure_channel(scout.target) as channel, pytest.raises(grpc.RpcError) as info:
        scout_pb2_grpc.AdminStub(channel).ReloadConfig(scout_pb2.ReloadConfigRequest())
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "without --config" in info.value.details()
