"""Factorized slates of varying length with an exact truth: each slot's item drawn independently per slot."""

from dataclasses import dataclass

import numpy as np

from offline_eval.base import SlateData


@dataclass(frozen=True)
class SlateWorld:
    logging: np.ndarray  # S-by-A per-slot distributions
    target: np.ndarray  # S-by-A
    click: np.ndarray  # S-by-A click probabilities
    length_p: np.ndarray  # probability of each length 1..S

    @property
    def truth(self) -> float:
        served = 1.0 - np.concatenate([[0.0], np.cumsum(self.length_p)[:-1]])  # P(L > k)
        return float((served * (self.target * self.click).sum(axis=1)).sum())


def slate_world(seed: int, slots: int = 3, actions: int = 5, closeness: float = 0.5) -> SlateWorld:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(slots, actions))
    logging = _softmax(base * 0.3)
    target = _softmax(base * 0.3 + closeness * rng.normal(size=(slots, actions)))
    click = rng.uniform(0.05, 0.6, size=actions)[None, :] / np.log2(np.arange(slots) + 2.0)[:, None]
    return SlateWorld(logging, target, click, np.full(slots, 1.0 / slots))


def sample(world: SlateWorld, n: int, seed: int) -> SlateData:
    rng = np.random.default_rng(seed)
    slots, actions = world.logging.shape
    lengths = rng.choice(np.arange(1, slots + 1), size=n, p=world.length_p)
    mask = np.arange(slots)[None, :] < lengths[:, None]
    u = rng.random((n, slots, 1))
    chosen = (u > np.cumsum(world.logging, axis=1)[None]).sum(axis=2)
    slot = np.arange(slots)[None, :]
    reward = (rng.random((n, slots)) < world.click[slot, chosen]) * mask
    # Features: one-hot of (slot, item), so the ridge reward model is well specified.
    onehot = np.zeros((n, slots, slots * actions))
    np.put_along_axis(onehot, (slot * actions + chosen)[:, :, None], 1.0, axis=2)
    target_x = np.zeros((n, slots, slots * actions))
    for k in range(slots):
        target_x[:, k, k * actions : (k + 1) * actions] = world.target[k]
    return SlateData(
        logged_propensity=np.where(mask, world.logging[slot, chosen], 1.0),
        target_propensity=np.where(mask, world.target[slot, chosen], 0.0),
        reward=reward.astype(np.float64),
        mask=mask,
        logged_features=onehot * mask[:, :, None],
        target_features=target_x * mask[:, :, None],
        reward_range=(0.0, 1.0),
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
