"""Catalog to index artifact: encode every item's content, index the vectors, measure recall."""

from __future__ import annotations

import logging
from pathlib import Path

from embeddings.base import Catalog, TextEncoder
from embeddings.cache import TextVectorCache
from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.factory import IndexConfig
from embeddings.index import IndexArtifact
from embeddings.tower import ContentTower, tower_text_encoder

log = logging.getLogger(__name__)


def build_artifact(
    catalog: Catalog,
    config: EncoderConfig,
    progress: bool = False,
    index_config: IndexConfig | None = None,
    text_cache: Path | None = None,
) -> IndexArtifact:
    """Encode ``catalog`` with a content encoder built from ``config`` and index the vectors.

    Parameters
    ----------
    catalog
        The items to index.
    config
        Content encoder settings (dimension, text encoder, device, seed).
    progress
        Show progress bars.
    index_config
        Which index to build (default :class:`IndexConfig`: exact below 50k items, IVF with tuned nprobe above).
    text_cache
        Directory of the text-vector cache; texts seen in an earlier build are not encoded again.
    """
    if len(catalog) == 0:
        raise ValueError("the catalog is empty")
    encoder = ContentEncoder.for_catalog(catalog, config)
    text: TextEncoder | None = None
    cache: TextVectorCache | None = None
    if text_cache is not None:
        text = cache = TextVectorCache(text_cache, encoder.text_source)
    vectors = encoder.encode(catalog, progress=progress, text=text)
    if cache is not None:
        cache.save()
    artifact = IndexArtifact.build(catalog, vectors, encoder.to_bytes(), index_config)
    artifact.manifest["build_params"] = {
        "encoder": {
            "dim": config.dim,
            "text_encoder": config.text_encoder,
            "text_buckets": config.text_buckets,
            "tag_buckets": config.tag_buckets,
            "seed": config.seed,
        }
    }
    if cache is not None:
        artifact.manifest["build_params"]["text_cache"] = {"hits": cache.hits, "misses": cache.misses}
    log.info("built index %s over %d items", artifact.version, len(artifact))
    return artifact


def build_tower_artifact(
    catalog: Catalog, tower_bytes: bytes, index_config: IndexConfig | None = None
) -> IndexArtifact:
    """Index ``catalog`` with the vectors of a trained content tower (``ContentTower.to_bytes``), stored with it."""
    if len(catalog) == 0:
        raise ValueError("the catalog is empty")
    tower = ContentTower.from_bytes(tower_bytes, device="cpu")
    text = tower_text_encoder(tower.text_encoder)
    vectors = tower.encode_features(tower.features(catalog, text))
    artifact = IndexArtifact.build(catalog, vectors, tower_bytes, index_config)
    artifact.manifest["build_params"] = {
        "encoder": {"kind": "content_tower", "dim": tower.config.dim, "text_encoder": tower.text_encoder}
    }
    log.info("built index %s over %d items from a trained tower", artifact.version, len(artifact))
    return artifact
