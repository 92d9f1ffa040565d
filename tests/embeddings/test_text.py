from pathlib import Path

import numpy as np
import pytest

from embeddings.cache import CacheError, TextVectorCache
from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.text import HashedTextEncoder, MiniLMTextEncoder
from offline_eval.vocabulary import GENRE_WORDS
from offline_eval.world import SyntheticWorld, WorldConfig

SENTENCES = {
    "jazz": [
        "late night saxophone ballad with a brushed drum trio",
        "bebop trumpet solo over walking upright bass",
        "smoky lounge quartet playing cool modal jazz standards",
        "swinging piano trio with a vibraphone",
    ],
    "spoken": [
        "weekly podcast interview with a science journalist",
        "history lecture episode about economics and politics",
        "audiobook chapter read by the author",
        "a panel discussion and debate about philosophy",
    ],
    "electronic": [
        "warehouse techno with a pounding kick and acid synth",
        "festival edm drop with neon lasers and synth bass",
        "modular synthesizer arpeggio loop",
        "deep house groove for the dance floor",
    ],
}


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(device="cpu")


@pytest.mark.slow
def test_minilm_loads_offline_and_groups_sentences_by_genre(
    minilm: MiniLMTextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    texts = [t for group in SENTENCES.values() for t in group] + [""]
    genre = np.repeat(np.arange(len(SENTENCES)), 4)
    vectors = minilm.encode_texts(texts)
    assert vectors.shape == (13, 384) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[-1], 0.0)  # missing text: zero, the other signals carry the item
    np.testing.assert_allclose(np.linalg.norm(vectors[:-1], axis=1), 1.0, rtol=1e-4)
    sim = vectors[:-1] @ vectors[:-1].T
    same = genre[:, None] == genre[None, :]
    off_diagonal = ~np.eye(12, dtype=bool)
    assert sim[same & off_diagonal].mean() > sim[~same].mean() + 0.15
    # Nearly every sentence's nearest other sentence is from its own genre.
    np.fill_diagonal(sim, -np.inf)
    assert (genre[sim.argmax(axis=1)] == genre).sum() >= 10


@pytest.mark.slow
def test_minilm_reads_the_synthetic_worlds_genre_words(minilm: MiniLMTextEncoder) -> None:
    world = SyntheticWorld(WorldConfig(num_items=160, num_creators=16, num_users=10, seed=4))
    keep = world.catalog.texts != ""
    vectors = minilm.encode_texts(world.catalog.texts[keep].tolist())
    genre = np.argmax(world.item_latent[keep], axis=1)
    sim = vectors @ vectors.T
    same = genre[:, None] == genre[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.1
    assert all(w.isalpha() or w.isalnum() for words in GENRE_WORDS.values() for w in words)


def test_cache_reencodes_only_changed_texts(tmp_path: Path) -> None:
    encoder = HashedTextEncoder(64)
    texts = ["jazz trumpet", "rock guitar", "", "jazz trumpet"]
    cache = TextVectorCache(tmp_path, encoder)
    first = cache.encode_texts(texts)
    np.testing.assert_array_equal(first, encoder.encode_texts(texts))
    assert (cache.hits, cache.misses) == (1, 3)
    cache.save()
    again = TextVectorCache(tmp_path, encoder)
    assert len(again) == 3
    changed = [*texts[:3], "folk banjo"]
    np.testing.assert_array_equal(again.encode_texts(changed), encoder.encode_texts(changed))
    assert (again.hits, again.misses) == (3, 1)
    (tmp_path / f"{encoder.name}.npz").write_bytes(b"not an npz")
    with pytest.raises(CacheError, match=r"hashed-64\.npz: unreadable text cache"):
        TextVectorCache(tmp_path, encoder)


def test_cache_rejects_vectors_of_another_width(tmp_path: Path) -> None:
    cache = TextVectorCache(tmp_path, HashedTextEncoder(64))
    cache.encode_texts(["a b"])
    cache.save()
    (tmp_path / "hashed-64.npz").rename(tmp_path / "hashed-32.npz")
    with pytest.raises(CacheError, match=r"hashed-32\.npz: vectors of shape \(1, 64\).*expected \(1, 32\)"):
        TextVectorCache(tmp_path, HashedTextEncoder(32))


@pytest.mark.slow
def test_minilm_content_encoder_gives_every_item_a_vector_and_round_trips(
    minilm: MiniLMTextEncoder, tmp_path: Path
) -> None:
    world = SyntheticWorld(WorldConfig(num_items=120, num_creators=12, num_users=5, seed=2))
    config = EncoderConfig(dim=16, seed=1, device="cpu", text_encoder="minilm")
    encoder = ContentEncoder.for_catalog(world.catalog, config)
    cache = TextVectorCache(tmp_path, minilm)
    vectors = encoder.encode(world.catalog, text=cache)
    assert (world.catalog.texts == "").any()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    restored = ContentEncoder.from_bytes(encoder.to_bytes(), device="cpu")
    assert restored.config.text_encoder == "minilm"
    np.testing.assert_allclose(restored.encode(world.catalog, text=cache), vectors, atol=1e-6)
    # An empty cache is falsy (len 0): it must still be used, and each distinct text is encoded once.
    assert cache.misses == len(set(world.catalog.texts.tolist()))
    assert cache.hits == 2 * len(world.catalog) - cache.misses
