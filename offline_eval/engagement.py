"""Engagement events drawn from the synthetic world's ground truth, for training and judging content towers.

A user is shown a uniform random sample of the catalog and clicks each item with its true click probability
(slot 0, neutral context); of its clicks, the ``per_user`` with the highest click probability are its engagements
(what it saved or played to the end). Items a user engaged with are, by construction,
close to that user's taste, so pairs of them are co-engagements that carry the world's latent structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embeddings.tower import co_engagement_pairs
from offline_eval.logs import DecisionLog
from offline_eval.world import SyntheticWorld, user_id


def synthetic_engagements(
    world: SyntheticWorld, users: np.ndarray, exposures: int, per_user: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Engagements of ``users`` (world indices): their ``per_user`` most likely clicks among ``exposures`` items.

    Returns
    -------
    unit_ids, items
        One row per click: the user's unit id (:func:`~offline_eval.world.user_id`) and the item's world index.
    """
    if exposures <= 0 or per_user <= 0:
        raise ValueError(f"exposures and per_user must be positive, got {exposures} and {per_user}")
    rng = np.random.default_rng(seed)
    n = world.config.num_items
    neutral = np.zeros(2)
    units: list[str] = []
    items: list[np.ndarray] = []
    for user in np.asarray(users, dtype=np.int64).tolist():
        shown = rng.choice(n, size=min(exposures, n), replace=False)
        p = world.click_probability(user, shown, neutral)
        hit = rng.random(len(shown)) < p
        engaged = shown[hit][np.argsort(-p[hit], kind="stable")[:per_user]]
        units += [user_id(user)] * len(engaged)
        items.append(engaged)
    return np.array(units, dtype=object), (np.concatenate(items) if items else np.zeros(0, np.int64))


def logged_engagements(log: DecisionLog) -> tuple[np.ndarray, np.ndarray]:
    """Engagements in Scout's logs: one row per served item whose observed reward is positive.

    Returns
    -------
    unit_ids, item_ids
        The deciding unit and the engaged item of each row (object arrays); several rows per unit make its
        co-engagement pairs (:func:`embeddings.tower.co_engagement_pairs`).
    """
    units: list[str] = []
    items: list[str] = []
    for unit, served, rewards, observed in zip(
        log["unit_id"], log["item_ids"], log["rewards"], log["reward_observed"], strict=True
    ):
        for item, reward, seen in zip(served, rewards, observed, strict=True):
            if seen and reward > 0:
                units.append(unit)
                items.append(item)
    return np.array(units, dtype=object), np.array(items, dtype=object)


@dataclass(frozen=True)
class ColdStartSplit:
    """Training pairs and held-out co-engagements, with a cohort of cold items that no training pair touches.

    Attributes
    ----------
    cold
        N booleans: the item is cold (it appears in no training pair).
    train_pairs
        P-by-2 world indices of warm items co-engaged by a training user.
    seeds
        Per test user, warm items it engaged with (they form its query).
    cold_targets, warm_targets
        Per test user, the other items it engaged with: cold ones and warm ones.
    """

    cold: np.ndarray
    train_pairs: np.ndarray
    seeds: list[np.ndarray]
    cold_targets: list[np.ndarray]
    warm_targets: list[np.ndarray]


def cold_start_split(
    world: SyntheticWorld,
    cold_share: float = 0.2,
    test_share: float = 0.2,
    exposures: int = 2000,
    per_user: int = 30,
    seeds_per_user: int = 5,
    max_pairs_per_unit: int = 200,
    seed: int = 0,
) -> ColdStartSplit:
    """Split the world's users into training and test users and its items into warm and cold ones.

    Training users' engagements with warm items become co-engagement pairs; each test user's warm engagements give
    ``seeds_per_user`` query items, and the rest of its engagements are the targets.
    """
    if not 0 < cold_share < 1 or not 0 < test_share < 1:
        raise ValueError(f"cold_share and test_share must be in (0, 1), got {cold_share} and {test_share}")
    rng = np.random.default_rng(seed)
    cfg = world.config
    cold = rng.random(cfg.num_items) < cold_share
    users = rng.permutation(cfg.num_users)
    n_test = max(1, int(test_share * cfg.num_users))
    test_users, train_users = users[:n_test], users[n_test:]
    units, items = synthetic_engagements(world, train_users, exposures, per_user, seed + 1)
    warm = ~cold[items]
    train_pairs = co_engagement_pairs(units[warm], items[warm], max_pairs_per_unit, seed + 2)
    seeds, cold_targets, warm_targets = [], [], []
    test_units, test_items = synthetic_engagements(world, test_users, exposures, per_user, seed + 3)
    for unit in dict.fromkeys(test_units.tolist()):
        engaged = np.unique(test_items[test_units == unit])
        warm_items = rng.permutation(engaged[~cold[engaged]])
        seeds.append(warm_items[:seeds_per_user])
        warm_targets.append(warm_items[seeds_per_user:])
        cold_targets.append(engaged[cold[engaged]])
    return ColdStartSplit(cold, train_pairs, seeds, cold_targets, warm_targets)
