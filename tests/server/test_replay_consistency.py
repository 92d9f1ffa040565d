"""What the server logs is what offline evaluation recomputes: the served policy replayed on its own decisions."""

import numpy as np

from bandits.features import feature_dim
from bandits.registry import create_policy
from embeddings.index import IndexArtifact
from offline_eval.logs import SCHEMA, DecisionLog
from offline_eval.replay import replay
from server.recommender import PolicyBook, Recommender, RecommendInput
from server.settings import load_settings


def test_item_and_creator_terms_score_the_same_online_and_in_replay(index: IndexArtifact) -> None:
    settings = load_settings(environ={})
    experiment = settings.experiments[0]
    variant = next(v for v in experiment.variants if v.name == "control")
    dim = feature_dim(index.dim, len(experiment.context_keys))
    policy = create_policy(variant.policy, dim, dict(variant.params) | {"arm_buckets": 256})
    rng = np.random.default_rng(0)
    rows = rng.choice(len(index), size=400, replace=False)
    # Item terms learned so strongly that they, not the shared model, decide the probabilities.
    policy.learn(
        rng.normal(size=(400, dim)) * 1e-3,
        rng.uniform(0, 5, size=400),
        item_ids=index.item_ids[rows],
        creator_ids=index.creator_ids[rows],
    )
    book = PolicyBook(settings, index.dim)
    book.swap(experiment.name, variant.name, policy)
    recommender = Recommender(settings, index, book, seed=7)
    records = []
    for i in range(200):
        record = recommender.decide(RecommendInput(f"u{i}", "home", 4, {"mobile": 1.0}, ("item-0000001",))).record
        if record["variant"] == variant.name:
            records.append(record | {"rewards": [0.0] * 4, "reward_observed": [False] * 4, "joined_at": 0})
    assert len(records) > 50
    log = DecisionLog({name: [r.get(name) for r in records] for name in SCHEMA.names})
    data = replay(log, index, policy)
    logged = np.array([r["propensities"] for r in records])
    # The served policy replayed on its own logs must give back exactly the logged propensities.
    np.testing.assert_allclose(data.target_propensity[:, :4], logged, rtol=1e-9)
