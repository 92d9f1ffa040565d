"""The exporter: writes joined decisions to Parquet files, each exactly once.

It reads the joined stream through a consumer group and acknowledges entries only after their file is on disk.
A file is named by the id of its first entry, so a restart that re-reads unacknowledged entries rewrites the
same file instead of adding a second copy. Files go to ``<log_dir>/date=YYYY-MM-DD/part-<first id>.parquet``
(Hive-style partitions that pandas, polars, DuckDB and Spark read as a dataset).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis

from offline_eval.logs import records_to_table
from server.settings import ExportSettings
from server.store import Store, joined_record

log = logging.getLogger(__name__)
GROUP, CONSUMER = "exporter", "exporter-1"


class Exporter:
    """Joined stream to Parquet.

    Parameters
    ----------
    store
        Redis state.
    settings
        Directory, rows per file and flush interval.
    """

    def __init__(self, store: Store, settings: ExportSettings) -> None:
        self.store, self.settings = store, settings
        self.buffer: list[tuple[str, dict[str, Any]]] = []
        self.exported = 0

    async def ensure_group(self) -> None:
        """Create the consumer group (reading from the stream's start) unless it exists."""
        try:
            await self.store.client.xgroup_create(self.store.joined, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def poll(self, block_ms: int | None = None) -> int:
        """Read new entries into the buffer (first those read before but never acknowledged)."""
        for start in ("0", ">"):
            reply: Any = await self.store.client.xreadgroup(
                GROUP,
                CONSUMER,
                {self.store.joined: start},
                count=self.settings.flush_rows,
                block=block_ms if start == ">" else None,
            )
            seen = {entry_id for entry_id, _ in self.buffer}
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    if key not in seen and fields:
                        self.buffer.append((key, joined_record(fields)))
        return len(self.buffer)

    async def flush(self) -> Path | None:
        """Write the buffer to one Parquet file, then acknowledge and trim; returns the file written."""
        if not self.buffer:
            return None
        ids = [entry_id for entry_id, _ in self.buffer]
        records = [record for _, record in self.buffer]
        day = dt.datetime.fromtimestamp(records[0]["joined_at"] / 1000, tz=dt.UTC).date().isoformat()
        path = self.settings.log_dir / f"date={day}" / f"part-{ids[0].replace('-', '_')}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".parquet.partial")
        pq.write_table(records_to_table(records), partial)
        os.replace(partial, path)
        await self.store.client.xack(self.store.joined, GROUP, *ids)
        learned: Any = await self.store.client.hget(self.store.learner, "position")
        if learned is not None:
            await self.store.client.xtrim(self.store.joined, minid=min(ids[-1], learned.decode(), key=_stream_id))
        self.exported += len(records)
        self.buffer.clear()
        log.info("exported %d joined decisions to %s", len(records), path)
        return path

    async def run(self, stop: asyncio.Event) -> None:
        """Export until ``stop`` is set, then flush what is buffered."""
        await self.ensure_group()
        last_flush = time.monotonic()
        while not stop.is_set():
            await self.poll(block_ms=int(min(self.settings.flush_interval_s, 0.5) * 1000))
            due = time.monotonic() - last_flush >= self.settings.flush_interval_s
            if len(self.buffer) >= self.settings.flush_rows or (due and self.buffer):
                await self.flush()
                last_flush = time.monotonic()
        await self.poll()
        await self.flush()


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
