"""A synthetic world with a known truth, for tests, the demo and the benchmarks.

Creators have power-law popularity and an emerging cohort (recent first release, low popularity, the same
quality distribution as everyone else). Each creator has a style in a latent space; its items scatter around it.
Content signals derive from an item's latent vector: words from its genre's vocabulary (the genre is the item's
largest latent dimension), tags whose directions it aligns with, and numeric descriptors that are a noisy linear
map of it. Some items miss their text or some descriptors. Users have latent tastes and a few seed items they
liked. The chance that a user clicks item ``a`` shown at slot ``k`` in context ``c`` is

    bias(k) * sigmoid(base + taste * <u, z_a> + quality(creator(a)) + item_quality(a)
                      + popularity_weight * familiarity(creator(a))
                      - mobile * duration(a) * mobile_weight + evening * energy(a) * evening_weight)

with ``bias(k) = 1 / log2(k + 2)``, ``familiarity`` the creator's standardized log-popularity, creator quality
drawn with sd ``quality_sd`` (``emerging_quality_sd`` for emerging creators when set) and item quality with sd
``item_quality_sd``. Because that probability is known, so is the value of any policy.

Presets (:func:`world_preset`): ``"foundation"`` (the default ``WorldConfig()``: quality only per creator, the same
spread for everyone, no familiarity advantage) and ``"tradeoff"`` (familiar creators get a click advantage,
emerging creators vary widely in quality, and every item has its own quality: blind exposure costs reward and
learning which emerging creators are good pays off; creator and item quality are not expressible by content
features, only by item/creator terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandits.base import Candidates, Policy
from embeddings.base import Catalog
from offline_eval.vocabulary import GENERIC_WORDS, GENRE_WORDS, TAG_WORDS

CONTEXT_KEYS = ("mobile", "evening")
GENRES = ("ambient", "jazz", "rock", "hiphop", "classical", "folk", "electronic", "spoken")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, effects and the seed of a synthetic world."""

    num_creators: int = 1000
    num_items: int = 20000
    num_users: int = 2000
    latent_dim: int = 8
    num_descriptors: int = 6
    num_tags: int = 48
    emerging_share: float = 0.2
    base: float = -2.0
    taste: float = 3.0
    quality_sd: float = 0.5
    mobile_weight: float = 0.8
    evening_weight: float = 0.5
    missing_share: float = 0.05
    popularity_weight: float = 0.0
    emerging_quality_sd: float | None = None
    item_quality_sd: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.num_creators, self.num_items, self.num_users) <= 0 or self.num_items < self.num_creators:
            raise ValueError("need positive sizes and at least one item per creator")
        if self.latent_dim != len(GENRES):
            raise ValueError(f"latent_dim must be {len(GENRES)} (one dimension per genre)")
        if min(self.quality_sd, self.item_quality_sd, self.emerging_quality_sd or 0.0) < 0:
            raise ValueError("quality_sd, item_quality_sd and emerging_quality_sd must be non-negative")


PRESETS: dict[str, dict[str, float]] = {
    "foundation": {},
    "tradeoff": {"popularity_weight": 0.5, "emerging_quality_sd": 1.0, "item_quality_sd": 0.5},
}


def world_preset(name: str, **overrides: int | float) -> WorldConfig:
    """A named world (``foundation`` or ``tradeoff``), with sizes or the seed overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown world preset {name!r}; known: {', '.join(PRESETS)}")
    return WorldConfig(**(PRESETS[name] | overrides))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Request:
    """One simulated Recommend call: the user, their seed items and the context, in ``CONTEXT_KEYS`` order."""

    user: int
    unit_id: str
    seed_item_ids: tuple[str, ...]
    context: dict[str, float]


def position_bias(num_slots: int) -> np.ndarray:
    """Examination probability of slots 0..n-1: ``1 / log2(k + 2)``."""
    return 1.0 / np.log2(np.arange(num_slots) + 2.0)


class SyntheticWorld:
    """Generate catalog, users and rewards from ``config``; everything follows from ``config.seed``."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = cfg = config or WorldConfig()
        rng = np.random.default_rng(cfg.seed)
        L = cfg.latent_dim
        # Creators: power-law popularity, an emerging cohort that is new and little known.
        emerging = rng.random(cfg.num_creators) < cfg.emerging_share
        popularity = 1.0 / (rng.permutation(cfg.num_creators) + 1.0) ** 1.1
        popularity = np.where(emerging, popularity * 0.05, popularity) * 1e6
        # Established creators' ages come from their own stream (one draw per creator), so fixing the old single
        # draw leaves every other draw of the world, and so the rest of the foundation world, unchanged.
        young = rng.uniform(1, 180, cfg.num_creators)
        rng.uniform(180, 3650, 1)
        extra_rng = np.random.default_rng([cfg.seed, 7])
        self.creator_age_days = np.where(emerging, young, extra_rng.uniform(180, 3650, cfg.num_creators))
        self.creator_popularity = popularity
        self.creator_emerging = emerging
        quality_z = rng.normal(0.0, 1.0, cfg.num_creators)
        emerging_sd = cfg.quality_sd if cfg.emerging_quality_sd is None else cfg.emerging_quality_sd
        self.creator_quality = quality_z * np.where(emerging, emerging_sd, cfg.quality_sd)
        log_pop = np.log(popularity)
        self.creator_familiarity = (log_pop - log_pop.mean()) / log_pop.std()
        centers = _unit(rng.normal(size=(cfg.num_creators, L)))
        # Items: at least one per creator, the rest by popularity^0.5.
        extra = rng.choice(cfg.num_creators, cfg.num_items - cfg.num_creators, p=_norm(np.sqrt(popularity)))
        self.item_creator = np.concatenate([np.arange(cfg.num_creators), extra])
        self.item_latent = _unit(centers[self.item_creator] + 0.6 * rng.normal(size=(cfg.num_items, L)) / np.sqrt(L))
        self.item_quality = extra_rng.normal(0.0, 1.0, cfg.num_items) * cfg.item_quality_sd
        self.descriptor_map = rng.normal(size=(L, cfg.num_descriptors))
        descriptors = self.item_latent @ self.descriptor_map + 0.3 * rng.normal(
            size=(cfg.num_items, cfg.num_descriptors)
        )
        self.duration = descriptors[:, 0].copy()
        self.energy = descriptors[:, 1].copy()
        # Users: latent tastes and a handful of liked seed items, drawn from popular items they are close to.
        self.user_taste = _unit(rng.normal(size=(cfg.num_users, L)))
        item_popularity = _norm(popularity[self.item_creator])
        pool = rng.choice(cfg.num_items, size=(cfg.num_users, 300), p=item_popularity)
        affinity = np.einsum("ul,upl->up", self.user_taste, self.item_latent[pool]) + 0.3 * rng.gumbel(size=pool.shape)
        self.user_seeds = np.take_along_axis(pool, np.argsort(-affinity, axis=1)[:, :8], axis=1)
        self._catalog = self._make_catalog(rng, descriptors)
        self._rng = rng

    def _make_catalog(self, rng: np.random.Generator, descriptors: np.ndarray) -> Catalog:
        cfg = self.config
        vocab = [list(GENRE_WORDS[g]) for g in GENRES]
        generic = list(GENERIC_WORDS)
        tag_names = [f"{_word(i)}-{GENRES[i % len(GENRES)]}" for i in range(cfg.num_tags)]
        tag_dirs = _unit(rng.normal(size=(cfg.num_tags, cfg.latent_dim)))
        genre = np.argmax(self.item_latent, axis=1)
        second = np.argsort(-self.item_latent, axis=1)[:, 1]
        texts, tags = [], []
        tag_score = self.item_latent @ tag_dirs.T + 0.3 * rng.gumbel(size=(cfg.num_items, cfg.num_tags))
        for i in range(cfg.num_items):
            words = [*rng.choice(vocab[genre[i]], 6), *rng.choice(vocab[second[i]], 2), *rng.choice(generic, 2)]
            texts.append("" if rng.random() < cfg.missing_share else " ".join(words))
            tags.append(tuple(tag_names[t] for t in np.argsort(-tag_score[i])[: rng.integers(0, 4)]))
        descriptors = descriptors.copy()
        descriptors[rng.random(descriptors.shape) < cfg.missing_share] = np.nan
        return Catalog(
            item_ids=np.array([item_id(i) for i in range(cfg.num_items)], dtype=object),
            creator_ids=np.array([f"creator-{c:05d}" for c in self.item_creator], dtype=object),
            texts=np.array(texts, dtype=object),
            tags=tuple(tags),
            descriptors=descriptors,
            creator_popularity=self.creator_popularity[self.item_creator],
            creator_age_days=self.creator_age_days[self.item_creator],
        )

    @property
    def catalog(self) -> Catalog:
        """The world's catalog (the content signals a service sees)."""
        return self._catalog

    def sample_request(self, rng: np.random.Generator) -> Request:
        """A random user, five of their seed items and a context."""
        user = int(rng.integers(self.config.num_users))
        seeds = rng.choice(self.user_seeds[user], size=5, replace=False)
        context = {"mobile": float(rng.random() < 0.6), "evening": float(rng.random() < 0.4)}
        return Request(user, user_id(user), tuple(item_id(int(s)) for s in seeds), context)

    def click_probability(self, user: int, items: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Click probability of each of K items (world indices) for ``user`` at slot 0, context in key order."""
        cfg = self.config
        logit = (
            cfg.base
            + cfg.taste * self.item_latent[items] @ self.user_taste[user]
            + self.creator_quality[self.item_creator[items]]
            + self.item_quality[items]
            + cfg.popularity_weight * self.creator_familiarity[self.item_creator[items]]
            - context[0] * cfg.mobile_weight * np.tanh(self.duration[items] / 2)
            + context[1] * cfg.evening_weight * np.tanh(self.energy[items] / 2)
        )
        return 1.0 / (1.0 + np.exp(-logit))

    def sample_clicks(self, rng: np.random.Generator, user: int, slate: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Bernoulli clicks (0/1) for a slate of world item indices, with position bias."""
        p = self.click_probability(user, slate, context) * position_bias(len(slate))
        return (rng.random(len(slate)) < p).astype(np.float64)

    def expected_slate_reward(
        self,
        policy: Policy,
        candidates: Candidates,
        user: int,
        items: np.ndarray,
        context: np.ndarray,
        num_items: int,
        rng: np.random.Generator,
        samples: int = 32,
    ) -> float:
        """Expected clicks on a slate that ``policy`` draws from ``candidates`` (world indices ``items``).

        Averages over ``samples`` sampled slate prefixes, and at each slot takes the exact expectation over the
        policy's slot distribution (so a deterministic policy's value is exact).
        """
        q = self.click_probability(user, items, context)
        bias = position_bias(min(num_items, candidates.count))
        total = 0.0
        for _ in range(samples):
            slate = policy.rank(candidates, num_items, rng)
            dists = policy.slot_distributions(candidates, slate.indices)
            total += float(bias @ (dists @ q))
        return total / samples


def item_id(index: int) -> str:
    """The catalog id of world item ``index``."""
    return f"item-{index:07d}"


def user_id(index: int) -> str:
    """The unit id of world user ``index``."""
    return f"user-{index:06d}"


def item_index(item_ids: list[str]) -> np.ndarray:
    """World indices of catalog ids made by :func:`item_id`."""
    return np.array([int(i.rsplit("-", 1)[1]) for i in item_ids], dtype=np.int64)


def user_index(unit_id: str) -> int:
    """World index of a unit id made by :func:`user_id`."""
    return int(unit_id.rsplit("-", 1)[1])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _norm(p: np.ndarray) -> np.ndarray:
    return p / p.sum()


def _word(index: int) -> str:
    return TAG_WORDS[index % len(TAG_WORDS)] + ("" if index < len(TAG_WORDS) else str(index // len(TAG_WORDS)))
