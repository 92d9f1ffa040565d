"""Catalog to index artifact: encode every item's content, index the vectors, measure recall."""

from __future__ import annotations

import logging

from embeddings.base import Catalog
from embeddings.encoder import ContentEncoder, EncoderConfig
from embeddings.index import IndexArtifact

log = logging.getLogger(__name__)


def build_artifact(catalog: Catalog, config: EncoderConfig, progress: bool = False) -> IndexArtifact:
    """Encode ``catalog`` with a content encoder built from ``config`` and index the vectors."""
    if len(catalog) == 0:
        raise ValueError("the catalog is empty")
    encoder = ContentEncoder.for_catalog(catalog, config)
    vectors = encoder.encode(catalog, progress=progress)
    artifact = IndexArtifact.build(catalog, vectors, encoder.to_bytes())
    artifact.manifest["build_params"] = {
        "encoder": {
            "dim": config.dim,
            "text_buckets": config.text_buckets,
            "tag_buckets": config.tag_buckets,
            "seed": config.seed,
        }
    }
    log.info("built index %s over %d items", artifact.version, len(artifact))
    return artifact
