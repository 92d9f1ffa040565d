"""The Python client package, installed into a fresh venv (no torch, no faiss), against a real server."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.redis]

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from scout_client import RewardBatcher, ScoutClient, scout_pb2

    out = {name: importlib.util.find_spec(name) is not None for name in ("torch", "faiss")}
    with ScoutClient(sys.argv[1], timeout_s=10.0) as client:
        slate = client.recommend("user-1", "home", 3, context={"mobile": 1.0}, seed_item_ids=["item-0000001"])
        items = [i.item_id for i in slate.items]
        out["items"] = len(items)
        out["reward"] = client.reward(slate.event_id, items[0], 1.0).accepted
        outcomes = client.reward_many([(slate.event_id, items[0], 9.0), (slate.event_id, "nope", 1.0),
                                       (slate.event_id, items[1], 0.5)])
        out["codes"] = [o.code for o in outcomes]
        out["duplicate"] = outcomes[0].result.duplicate
        batcher = RewardBatcher(client, max_batch=2, max_delay_s=0.1)
        for k in range(5):
            other = client.recommend(f"user-{k + 10}", "home", 2)
            batcher.add(other.event_id, other.items[0].item_id, 1.0)
        batcher.add("no-such-event", "x", 1.0)
        batcher.close()
        out["batched"], out["batch_failures"] = batcher.sent, [o.code for _, o in batcher.failures]
        listed = client.admin.ListExperiments(scout_pb2.ListExperimentsRequest(), timeout=10)
        out["experiments"] = [e.name for e in listed.experiments]
        try:
            client.recommend("user-1", "attic", 2)
        except Exception as exc:
            out["error"] = exc.code().name
    print(json.dumps(out))
    """
)


def test_client_installs_without_torch_or_faiss_and_talks_to_a_server(scout, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    source = shutil.copytree(ROOT / "clients" / "python", tmp_path / "client-source")  # builds outside the repo
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], check=True, timeout=600)
    script = tmp_path / "use_client.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [str(python), str(script), scout.target], check=True, capture_output=True, text=True, timeout=120
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["faiss"] is False
    assert out["items"] == 3 and out["reward"] is True
    assert out["codes"] == [0, 3, 0] and out["duplicate"] is True  # the first value stands; the bad item is refused
    assert out["batched"] == 6 and out["batch_failures"] == [5]  # NOT_FOUND for the unknown event, the rest OK
    assert out["experiments"] == ["home-ranking"] and out["error"] == "NOT_FOUND"
