"""Cumulative reward and regret of every policy against the oracle on the synthetic world.

The stream is what the server does: a small FAISS index over the world's catalog (``embeddings.builder``), the
query is the mean vector of five seed items, 30 candidates are retrieved, the policy ranks a slate of 5 with exact
propensities, clicks follow the world's click model (with position bias), and the policy learns from the joined
decisions every 500 decisions. Every policy sees the same requests and candidates. The oracle ranks the
candidates by their true click probability. Reported per policy: cumulative expected clicks (the world's exact
expectation for the served slate, so sampling noise in the metric is small), regret against the oracle,
clicks per decision over the last 10k decisions (or the last 10% of shorter streams), and the share of served
slots that went to emerging creators; then the exposure/reward trade-off curve of each emerging mechanism.
Saves ``benchmarks/results/bandits_regret_<preset>.json`` and ``.png``.

    .venv/bin/python benchmarks/bandits_regret.py --preset foundation [--decisions 100000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bandits.base import CandidateBatch, Candidates, Policy  # noqa: E402
from bandits.emerging import EmergingRule  # noqa: E402
from bandits.features import build_features_batch, feature_dim  # noqa: E402
from bandits.registry import create_policy  # noqa: E402
from embeddings.builder import build_artifact  # noqa: E402
from embeddings.encoder import EncoderConfig  # noqa: E402
from offline_eval.world import CONTEXT_KEYS, SyntheticWorld, item_index, position_bias, world_preset  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ARMS = {"arm_buckets": 65536, "arm_l2": 20.0}

POLICIES: dict[str, tuple[str, dict]] = {
    "uniform": ("epsilon_greedy", {"epsilon": 1.0}),
    "linucb (content only)": ("linucb", {"alpha": 0.2, "floor": 0.02}),
    "linucb": ("linucb", {"alpha": 0.2, "floor": 0.02} | ARMS),
    "thompson": ("thompson", {"scale": 0.1, "draws": 50, "floor": 0.02} | ARMS),
    "epsilon_greedy": ("epsilon_greedy", {"epsilon": 0.05} | ARMS),
    "softmax": ("softmax", {"temperature": 0.02, "floor": 0.02} | ARMS),
}
VW: dict[str, tuple[str, dict]] = {
    "vw epsilon 0.05": ("vw", {"exploration": "epsilon", "epsilon": 0.05}),
    "vw bag 5": ("vw", {"exploration": "bag", "bag": 5, "epsilon": 0.02}),
    "vw squarecb": ("vw", {"exploration": "squarecb"}),
}
RELEVANCE = POLICIES["linucb"]
TRADEOFF: dict[str, list[dict]] = {
    "emerging_weight": [{"emerging_weight": w} for w in (0.01, 0.03, 0.06, 0.1)],
    "emerging_slots": [{"emerging_slots": s} for s in (1, 2)],
    "optimism": [{"optimism": o} for o in (0.05, 0.15, 0.3)],
}


@dataclass
class Stream:
    users: np.ndarray
    queries: np.ndarray
    context: np.ndarray
    positions: np.ndarray
    truth: np.ndarray  # n x K click probability at slot 0
    emerging: np.ndarray


def make_stream(world: SyntheticWorld, index, n: int, k: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    requests = [world.sample_request(rng) for _ in range(n)]
    queries = np.stack([index.query(index.positions(list(r.seed_item_ids))) for r in requests]).astype(np.float32)
    _, positions = index.index.search(queries, k)
    context = np.array([[r.context[key] for key in CONTEXT_KEYS] for r in requests])
    users = np.array([r.user for r in requests])
    world_items = item_index(index.item_ids.tolist())
    truth = np.stack(
        [world.click_probability(u, world_items[p], c) for u, p, c in zip(users, positions, context, strict=True)]
    )
    rule = EmergingRule().resolve(index.creator_ids, index.creator_popularity)
    emerging = rule.flags(index.creator_popularity[positions], index.creator_age_days[positions])
    return Stream(users, queries.astype(np.float64), context, positions, truth, emerging)


def run(policy: Policy, stream: Stream, index, slate: int, every: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n, k = stream.positions.shape
    bias = position_bias(slate)
    vectors = index.vectors.astype(np.float64)
    expected = np.empty(n)
    emerging_slots = 0
    served = np.empty((n, slate), dtype=np.int64)
    propensities = np.empty((n, slate))
    clicks = np.empty((n, slate))
    start = time.perf_counter()
    for t in range(n):
        pos = stream.positions[t]
        cands = Candidates.from_parts(
            stream.queries[t],
            vectors[pos],
            stream.context[t],
            stream.emerging[t],
            index.item_ids[pos],
            index.creator_ids[pos],
        )
        chosen = policy.rank(cands, slate, rng)
        q = stream.truth[t, chosen.indices]
        expected[t] = float(bias @ q)
        emerging_slots += int(stream.emerging[t, chosen.indices].sum())
        served[t], propensities[t] = chosen.indices, chosen.propensities
        clicks[t] = rng.random(slate) < bias * q
        if (t + 1) % every == 0:
            lo = t + 1 - every
            pos_b = stream.positions[lo : t + 1]
            features = build_features_batch(stream.queries[lo : t + 1], vectors[pos_b], stream.context[lo : t + 1])
            batch = CandidateBatch(
                features,
                np.ones((every, k), bool),
                stream.emerging[lo : t + 1],
                index.item_ids[pos_b],
                index.creator_ids[pos_b],
            )
            policy.update_batch(batch, served[lo : t + 1], clicks[lo : t + 1], propensities[lo : t + 1])
    seconds = time.perf_counter() - start
    tail = min(10000, max(1, n // 10))
    return {
        "cumulative": float(expected.sum()),
        "last_per_decision": float(expected[-tail:].mean()),
        "emerging_share": emerging_slots / (n * slate),
        "curve": np.cumsum(expected)[:: max(1, n // 200)].tolist(),
        "seconds": seconds,
    }


def oracle(stream: Stream, slate: int) -> dict:
    bias = position_bias(slate)
    top = np.argsort(-stream.truth, axis=1)[:, :slate]
    expected = (np.take_along_axis(stream.truth, top, axis=1) * bias).sum(axis=1)
    n = len(expected)
    tail = min(10000, max(1, n // 10))
    emerging = np.take_along_axis(stream.emerging, top, axis=1).mean()
    return {
        "cumulative": float(expected.sum()),
        "last_per_decision": float(expected[-tail:].mean()),
        "emerging_share": float(emerging),
        "curve": np.cumsum(expected)[:: max(1, n // 200)].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="foundation", choices=["foundation", "tradeoff"])
    parser.add_argument("--decisions", type=int, default=100000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--slate", type=int, default=5)
    parser.add_argument("--every", type=int, default=500, help="decisions between updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vw", action="store_true")
    parser.add_argument("--no-tradeoff", action="store_true")
    parser.add_argument("--only", nargs="+", help="run only these policy labels (e.g. linucb thompson)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    t0 = time.perf_counter()
    world = SyntheticWorld(world_preset(args.preset, num_items=args.items, seed=args.seed))
    index = build_artifact(world.catalog, EncoderConfig(dim=32, seed=0, device="cpu"))
    stream = make_stream(world, index, args.decisions, args.candidates, args.seed + 1)
    took = time.perf_counter() - t0
    print(f"world {args.preset}, {args.items} items, index d={index.dim}; stream of {args.decisions} in {took:.0f} s")
    dim = feature_dim(index.dim, len(CONTEXT_KEYS))
    results: dict = {"oracle": oracle(stream, args.slate)}
    best = results["oracle"]["cumulative"]
    print(f"{'policy':<28}{'cum. reward':>12}{'regret':>10}{'last/dec':>10}{'% oracle':>10}{'emerging':>10}{'s':>7}")

    def show(label: str, row: dict) -> None:
        pct = 100 * row["last_per_decision"] / results["oracle"]["last_per_decision"]
        print(
            f"{label:<28}{row['cumulative']:>12.0f}{best - row['cumulative']:>10.0f}{row['last_per_decision']:>10.3f}"
            f"{pct:>9.1f}%{100 * row['emerging_share']:>9.1f}%{row.get('seconds', 0):>7.0f}"
        )

    show("oracle", results["oracle"])
    cases = dict(POLICIES) | ({} if args.no_vw else dict(VW))
    if args.only:
        unknown = set(args.only) - set(cases)
        if unknown:
            parser.error(f"--only: unknown policies {sorted(unknown)}; known: {sorted(cases)}")
        cases = {label: cases[label] for label in args.only}
    for label, (name, params) in cases.items():
        results[label] = run(create_policy(name, dim, params), stream, index, args.slate, args.every, args.seed)
        results[label]["policy"], results[label]["params"] = name, params
        show(label, results[label])
    tradeoff: dict = {}
    if not args.no_tradeoff:
        for mechanism, settings in TRADEOFF.items():
            tradeoff[mechanism] = []
            for extra in settings:
                name, params = RELEVANCE
                row = run(create_policy(name, dim, params | extra), stream, index, args.slate, args.every, args.seed)
                row |= {"params": params | extra}
                tradeoff[mechanism].append(row)
                show(f"  {mechanism}={next(iter(extra.values()))}", row)
    for label, row in results.items():
        if label != "oracle":
            row["regret"] = best - row["cumulative"]
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "args": vars(args),
        "policies": results,
        "tradeoff": tradeoff,
        "relevance_only": "linucb",
        "seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bandits_regret_{args.preset}{args.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    plot(out, RESULTS / f"bandits_regret_{args.preset}{args.tag}.png", args.preset)
    print(f"saved {path}")


def plot(out: dict, path: Path, preset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    oracle_curve = np.array(out["policies"]["oracle"]["curve"])
    step = max(1, out["args"]["decisions"] // 200)
    for label, row in out["policies"].items():
        if label == "oracle":
            continue
        curve = np.array(row["curve"])
        left.plot(np.arange(len(curve)) * step, oracle_curve[: len(curve)] - curve, label=label)
    left.set(title=f"regret vs oracle ({preset} world)", xlabel="decisions", ylabel="cumulative regret (clicks)")
    left.legend(fontsize=8)
    base = out["policies"].get("linucb")
    if base is None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    right.scatter([100 * base["emerging_share"]], [base["cumulative"]], color="black", label="relevance only")
    for mechanism, rows in out["tradeoff"].items():
        right.plot([100 * r["emerging_share"] for r in rows], [r["cumulative"] for r in rows], "o-", label=mechanism)
    right.axhline(0.98 * base["cumulative"], ls="--", color="grey", label="2% reward loss")
    right.set(
        title="emerging exposure vs reward (LinUCB)",
        xlabel="emerging share of served slots (%)",
        ylabel="cumulative expected clicks",
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
