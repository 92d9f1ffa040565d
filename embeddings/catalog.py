"""Read and write catalogs as Parquet: one row per item.

Columns: ``item_id`` (string, unique), ``creator_id`` (string), ``text`` (string), ``tags`` (list of strings),
``descriptors`` (list of float, the same length on every row, null entries for missing values),
``creator_popularity`` (float, >= 0), ``creator_age_days`` (float, >= 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.base import Catalog

COLUMNS = ("item_id", "creator_id", "text", "tags", "descriptors", "creator_popularity", "creator_age_days")


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or malformed; the message names the file and the problem."""


def write_catalog(catalog: Catalog, path: Path) -> None:
    """Write ``catalog`` to the Parquet file ``path``."""
    descriptors = [[None if np.isnan(v) else float(v) for v in row] for row in catalog.descriptors]
    table = pa.table(
        {
            "item_id": pa.array(catalog.item_ids.tolist(), pa.string()),
            "creator_id": pa.array(catalog.creator_ids.tolist(), pa.string()),
            "text": pa.array(catalog.texts.tolist(), pa.string()),
            "tags": pa.array([list(t) for t in catalog.tags], pa.list_(pa.string())),
            "descriptors": pa.array(descriptors, pa.list_(pa.float64())),
            "creator_popularity": pa.array(catalog.creator_popularity, pa.float64()),
            "creator_age_days": pa.array(catalog.creator_age_days, pa.float64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_catalog(path: Path) -> Catalog:
    """Read and validate a catalog Parquet file; problems raise ``CatalogError`` naming the file."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc}") from exc
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)}")
    data = {c: table.column(c).to_pylist() for c in COLUMNS}
    for column in ("item_id", "creator_id", "creator_popularity", "creator_age_days"):
        if None in data[column]:
            raise CatalogError(f"{path}: column {column} has a null at row {data[column].index(None)}")
    widths = {len(row or []) for row in data["descriptors"]}
    if len(widths) > 1:
        raise CatalogError(f"{path}: column descriptors has rows of different lengths {sorted(widths)}")
    width = widths.pop() if widths else 0
    descriptors = np.array(
        [[np.nan if v is None else v for v in (row or [np.nan] * width)] for row in data["descriptors"]],
        dtype=np.float64,
    ).reshape(len(data["item_id"]), width)
    try:
        return Catalog(
            item_ids=np.array(data["item_id"], dtype=object),
            creator_ids=np.array(data["creator_id"], dtype=object),
            texts=np.array([t or "" for t in data["text"]], dtype=object),
            tags=tuple(tuple(t or ()) for t in data["tags"]),
            descriptors=descriptors,
            creator_popularity=np.array(data["creator_popularity"], dtype=np.float64),
            creator_age_days=np.array(data["creator_age_days"], dtype=np.float64),
        )
    except ValueError as exc:
        raise CatalogError(f"{path}: {exc}") from exc
