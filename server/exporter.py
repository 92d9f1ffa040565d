"""The exporter: writes joined decisions (and late rewards) to Parquet files, each entry exactly once.

Each exporter process reads a stream through a consumer group under its own consumer name and acknowledges
entries only after their file is on disk. Files are named by their first entry id *and* the consumer name
(``part-<first id>-<consumer>.parquet``), so no process ever overwrites another's file, and a process that
re-writes a batch after a failed acknowledgement replaces its own file with a superset of it.

Liveness: every exporter refreshes a heartbeat key of its own (``export.consumer_ttl_s``). A live exporter claims
the unacknowledged entries of a consumer whose heartbeat expired. Before writing a file an exporter records its path
in ``{p}:export:inflight``, in one script with refreshing its heartbeat and only if the heartbeat is still live. It
writes (and fsyncs) each file as ``data`` in a hidden staging directory, ``.<name>.d``, and publishes it by renaming
``.<name>.d/data`` to the file's name. One exporter at a time claims a dead one (a lock under the stream's hash
tag). The claimer first fences each recorded path: it puts a plain file at ``.<name>.d`` (``O_EXCL``), moving aside
and removing the owner's directory if it is there. The rename goes by path, so from then on the owner can publish
nothing. The claimer acknowledges (instead of exporting again) the entries of the files that did reach disk
(exporters sharing a Redis share ``log_dir``) and exports the rest. An exporter whose heartbeat lapsed, or that
finds itself fenced, drops its buffer and goes on under a new consumer name (``<name>-g<n>``): the entries of the
old one are claimed like any dead exporter's. So a paused exporter that wakes after being claimed exports nothing
twice and loses nothing. The fences are empty hidden files, left in place (readers skip names starting with ``.``).

Files roll at ``export.flush_rows`` rows, ``export.max_file_bytes`` of buffered records or
``export.flush_interval_s`` after their first row. Decisions are partitioned by the UTC date of the *decision*
(``decided_at``): ``<log_dir>/date=YYYY-MM-DD/part-....parquet``; late rewards by the UTC date they arrived:
``<late_dir>/date=YYYY-MM-DD/part-....parquet``. Every file records ``scout.schema_version`` and
``scout.dataset`` in its Parquet key-value metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import secrets
import shutil
import stat
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from offline_eval.logs import SCHEMA_VERSION, records_to_table
from server.settings import ExportSettings
from server.store import EXPORTER_GROUP, Store, joined_record, stream_id

log = logging.getLogger(__name__)
#: Longest a file write keeps its exporter's heartbeat alive (s): past it the write is taken as hung.
MAX_WRITE_S = 300.0


def _staging(path: Path) -> Path:
    """Where ``path`` is written before it is published: a hidden directory, which readers of the log skip."""
    return path.with_name(f".{path.name}.d")


def _stage(path: Path) -> int:
    """Create ``path``'s staging directory and open it; Fenced if a claimer's fence (a plain file) is there.

    A directory already there is this exporter's own, left by a failure (consumer names are unique to a process):
    it is removed and made again.
    """
    staging = _staging(path)
    staging.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            os.mkdir(staging)
            return os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(staging).st_mode):
                    raise Fenced(path) from None
                shutil.rmtree(staging, ignore_errors=True)
        except (FileNotFoundError, NotADirectoryError) as exc:  # replaced by a fence between mkdir and open
            raise Fenced(path) from exc
    raise Fenced(path)  # a claimer keeps moving it away


def _write_data(directory: int, table: pa.Table) -> None:
    """Write ``table`` as the staging directory's ``data`` file (opened by descriptor) and sync it to disk."""
    fd = os.open("data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=directory)
    with os.fdopen(fd, "wb") as file:
        pq.write_table(table, file)
        file.flush()
        os.fsync(file.fileno())


def _publish(path: Path) -> None:
    """Rename the staged ``data`` to ``path``; Fenced once a claimer has replaced the staging directory.

    The rename goes by path, not by the directory's descriptor, so a fence placed at any moment before it wins.
    Then the directory entry is synced and the staging directory removed.
    """
    staging = _staging(path)
    try:
        os.rename(staging / "data", path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise Fenced(path) from exc
    _sync_directory(path.parent)
    _sync_directory(path.parent.parent)  # the date= directory may be new
    with contextlib.suppress(OSError):
        os.rmdir(staging)  # a claimer may have fenced it since: its fence stays


def _sync_directory(directory: Path) -> None:
    """Sync a directory to disk, so that the names created or renamed in it survive a crash.

    A filesystem that cannot sync a directory (some network and FUSE ones answer EINVAL) is left as it is.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class Fenced(Exception):
    """Another exporter claimed this one's entries and fenced the file it was writing: it must publish nothing."""


LATE_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("item_id", pa.string()),
        ("value", pa.float64()),
        ("received_at", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Dataset:
    """One exported stream: where it is read from and how its entries become rows."""

    name: str
    stream: str
    group: str
    directory: Path
    to_record: Callable[[dict[bytes, bytes]], dict[str, Any]]
    to_table: Callable[[list[dict[str, Any]]], pa.Table]
    date_ms: Callable[[dict[str, Any]], int]
    key_columns: tuple[str, ...]
    shard: int = 0
    #: Added to file names and in-flight records when decisions are sharded ("" with one shard).
    shard_label: str = ""


def decision_dataset(store: Store, settings: ExportSettings, shard: int = 0) -> Dataset:
    """Joined decisions of one shard, partitioned by decision date."""
    return Dataset(
        "decisions",
        store.joined_keys[shard],
        EXPORTER_GROUP,
        settings.log_dir,
        joined_record,
        records_to_table,
        _decided_at,
        ("event_id",),
        shard,
        _shard_label(store, shard),
    )


def late_dataset(store: Store, settings: ExportSettings, shard: int = 0) -> Dataset:
    """Rewards of one shard that arrived after their decision's window, partitioned by the date they arrived."""
    return Dataset(
        "late",
        store.late_keys[shard],
        "late-exporter",
        settings.late_dir,
        late_record,
        _late_table,
        _received_at,
        ("event_id", "item_id"),
        shard,
        _shard_label(store, shard),
    )


def _shard_label(store: Store, shard: int) -> str:
    return "" if store.shards == 1 else f"s{shard}-"


def late_record(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A late-reward stream entry as a row."""
    return {
        "event_id": fields[b"event_id"].decode(),
        "item_id": fields[b"item_id"].decode(),
        "value": float(fields[b"value"]),
        "received_at": int(fields[b"received_at"]),
    }


def _late_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=LATE_SCHEMA)


def _decided_at(record: dict[str, Any]) -> int:
    return int(record["decided_at"])


def _received_at(record: dict[str, Any]) -> int:
    return int(record["received_at"])


class Exporter:
    """A stream to Parquet files, exactly once, with any number of exporter processes.

    Parameters
    ----------
    store
        Redis state.
    settings
        Directories, rolling thresholds and the heartbeat TTL.
    consumer
        This process's consumer name (unique per process).
    dataset
        What to export (default: the joined decisions).
    """

    def __init__(self, store: Store, settings: ExportSettings, consumer: str, dataset: Dataset | None = None) -> None:
        self.store, self.settings = store, settings
        self.dataset = dataset or decision_dataset(store, settings)
        #: The name this exporter started with; it reads as ``<base>-g<n>`` after being presumed dead ``n`` times.
        self.base = consumer
        self.generation = 0
        self.consumer = consumer
        self.buffer: dict[str, dict[str, Any]] = {}
        self.buffer_bytes = 0
        self.first_buffered: float | None = None
        self.exported = 0
        self.claimed = 0
        self.files: list[Path] = []
        self._ready = False
        self._started = False
        self._last_claim = 0.0
        self._unparseable: list[str] = []
        self.dropped = 0

    async def step(self) -> float:
        """Heartbeat, claim a dead exporter's entries, read, and roll a file when due; returns 0 (reads block)."""
        try:
            if not self._ready:
                await self._prepare()
            if not await self._heartbeat():
                await self._presumed_dead("its heartbeat expired")
                return 0.0
            if time.monotonic() - self._last_claim >= self.settings.consumer_ttl_s / 4:
                await self.claim_dead()
                self._last_claim = time.monotonic()
            await self.poll(block_ms=int(min(self.settings.flush_interval_s, 0.5) * 1000))
            if self.due():
                await self.flush()
        except Exception:
            self._ready = False
            raise
        return 0.0

    async def _prepare(self) -> None:
        """Create the group if needed and re-read what this consumer was delivered but has not acknowledged.

        After a failure, a consumer whose heartbeat expired meanwhile is not revived: another exporter may be
        claiming its entries, so this one goes on under a new name.
        """
        try:
            await self.store.client.xgroup_create(self.dataset.stream, self.dataset.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if self._started and not await self._heartbeat():  # refreshed only while live, never revived
            await self._presumed_dead("its heartbeat expired while it was failing")
        if not self._started:  # a name no exporter has read under yet, so none can have claimed it
            await self._heartbeat(create=True)
            self._started = True
        await self.poll(start="0")
        self._ready = True

    def _member(self, consumer: str) -> str:
        """Name ``consumer`` has in this dataset (and shard): its heartbeat and in-flight field."""
        return f"{self.dataset.name}:{self.dataset.shard_label}{consumer}"

    async def _heartbeat(self, create: bool = False) -> bool:
        """Refresh this consumer's heartbeat; False when it had expired (others may have claimed our entries)."""
        ttl = int(self.settings.consumer_ttl_s * 1000)
        key = self.store.alive_key(self._member(self.consumer))
        if create:
            await self.store.client.set(key, "1", px=ttl)
            return True
        return bool(await self.store.client.set(key, "1", px=ttl, xx=True))

    async def _presumed_dead(self, why: str) -> None:
        """Drop the buffer and go on under a new consumer name; the old name's entries are claimed like a dead one's."""
        log.error(
            "%s: exporter %s was presumed dead (%s); dropping %d buffered entries to the claimer, going on as %s-g%d",
            self.dataset.name,
            self.consumer,
            why,
            len(self.buffer),
            self.base,
            self.generation + 1,
        )
        self._clear()
        self._ready = False
        self._started = False
        old = self.store.alive_key(self._member(self.consumer))
        self.generation += 1
        self.consumer = f"{self.base}-g{self.generation}"
        self._last_claim = 0.0  # claim the old name's entries at once
        await self.store.client.delete(old)  # it may still be live if the fence came first: let the claim start now

    def due(self) -> bool:
        """Whether the buffered entries make a file now (rows, bytes or age)."""
        if not self.buffer:
            return False
        s = self.settings
        old = self.first_buffered is not None and time.monotonic() - self.first_buffered >= s.flush_interval_s
        return len(self.buffer) >= s.flush_rows or self.buffer_bytes >= s.max_file_bytes or old

    def _add(self, entry_id: Any, fields: dict[bytes, bytes] | None) -> None:
        key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        if key in self.buffer or not fields:
            return
        try:
            record = self.dataset.to_record(fields)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("%s: stream entry %s does not parse (%s); dropped", self.dataset.name, key, exc)
            self._unparseable.append(key)
            return
        if self.first_buffered is None:
            self.first_buffered = time.monotonic()
        self.buffer[key] = record
        self.buffer_bytes += sum(len(k) + len(v) for k, v in fields.items())

    async def poll(self, block_ms: int | None = None, start: str = ">") -> int:
        """Read entries into the buffer: new ones (``>``) or this consumer's unacknowledged ones (``0``)."""
        room = max(1, self.settings.flush_rows - len(self.buffer))
        reply: Any = await self.store.client.xreadgroup(
            self.dataset.group,
            self.consumer,
            {self.dataset.stream: start},
            count=None if start == "0" else room,
            block=block_ms if start == ">" else None,
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._add(entry_id, fields)
        if self._unparseable:  # no row can come of them: acknowledge, so they do not pin the stream forever
            await self.store.client.xack(self.dataset.stream, self.dataset.group, *self._unparseable)
            self.dropped += len(self._unparseable)
            self._unparseable = []
        return len(self.buffer)

    async def claim_dead(self) -> int:
        """Take over the unacknowledged entries of consumers whose heartbeat expired; returns how many.

        One exporter at a time claims a given dead consumer (a lock under the stream's hash tag, renewed by every
        claim call); it fences the files the dead one recorded in flight, acknowledges the entries those files hold,
        buffers the rest, and deletes the consumer once it has nothing pending.
        """
        client, ds = self.store.client, self.dataset
        ttl = int(self.settings.consumer_ttl_s * 1000)
        consumers: Any = await client.xinfo_consumers(ds.stream, ds.group)
        total = 0
        for info in consumers:
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            if name == self.consumer or await client.exists(self.store.alive_key(self._member(name))):
                continue
            if not await self.store.lock_claim(ds.stream, name, self.consumer, ttl):
                continue  # another exporter is claiming it
            written = await asyncio.to_thread(self._fence, await self._inflight_paths(name))
            claimed = acknowledged = 0
            while True:
                pending: Any = await client.xpending_range(ds.stream, ds.group, "-", "+", 1000, consumername=name)
                if not pending:
                    break
                ids = [p["message_id"] for p in pending]
                fields = await self.store.entries(ds.stream, ids)
                # in a file the dead one published, or trimmed away: nothing left to export
                done = [i for i, f in zip(ids, fields, strict=True) if not f or self._key(f) in written]
                rest = [i for i, f in zip(ids, fields, strict=True) if f and self._key(f) not in written]
                entries = await self.store.claim(ds.stream, ds.group, name, self.consumer, ttl, done, rest)
                if entries is None:
                    log.warning("%s: lost the claim on dead exporter %s to another exporter", ds.name, name)
                    break
                for entry_id, entry_fields in entries:
                    self._add(entry_id, entry_fields)
                gone = set(rest) - {e for e, f in entries if f}  # trimmed away since: nothing left to export
                if gone:
                    await client.xack(ds.stream, ds.group, *gone)
                claimed += len(entries)
                acknowledged += len(done)
            if await self.store.forget(ds.stream, ds.group, name, self.consumer):
                await client.hdel(self.store.inflight, self._member(name))
            if claimed or acknowledged:
                log.warning(
                    "%s: claimed %d entries of dead exporter %s (and acknowledged %d already in its files)",
                    ds.name,
                    claimed,
                    name,
                    acknowledged,
                )
            total += claimed + acknowledged
        self.claimed += total
        return total

    async def _inflight_paths(self, consumer: str) -> list[str]:
        paths: Any = await self.store.client.hget(self.store.inflight, self._member(consumer))
        return (paths or b"").decode().splitlines()

    def _fence(self, paths: list[str]) -> set[tuple[Any, ...]]:
        """Stop a dead consumer from publishing ``paths``, then return the row keys of those that reached disk.

        For each path, put a plain file where the owner stages it (``.<name>.d``, created with ``O_EXCL``),
        first moving aside and removing the owner's staging directory if it is there; a plain file already there
        is an earlier claimer's fence, and stays. The owner publishes by renaming ``.<name>.d/data`` by path,
        which fails once its directory is replaced, so after this it can publish none of them: what is on disk now
        is all it ever wrote. A published file that is not Parquet is moved aside (hidden,
        ``.<name>.unreadable``) and its entries are exported again.
        """
        written: set[tuple[Any, ...]] = set()
        for text in paths:
            path = Path(text)
            staging = _staging(path)
            staging.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    break
                except FileExistsError:
                    aside = staging.with_name(f"{staging.name}.fenced-{self.consumer}-{secrets.token_hex(3)}")
                    try:  # the trailing slash renames a directory only, in the one step that checks it
                        os.rename(f"{staging}/", aside)
                    except NotADirectoryError:
                        break  # fenced by an earlier claim: a fence is never removed
                    except FileNotFoundError:
                        continue  # published or removed meanwhile: fence on the next try
                    shutil.rmtree(aside, ignore_errors=True)  # the owner may still be writing into it
            _sync_directory(path.parent)  # an owner's rename seen here is on disk before its entries are acked
            if not path.exists():
                continue
            try:
                rows = pq.read_table(path, columns=list(self.dataset.key_columns)).to_pylist()
            except (pa.ArrowInvalid, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # an I/O error: the claim is retried (pyarrow's damaged-file errors carry no errno)
                unreadable = path.with_name(f".{path.name}.unreadable")
                os.replace(path, unreadable)
                log.error("%s does not read (%s); moved to %s, its entries are exported again", path, exc, unreadable)
                continue
            written |= {tuple(row[c] for c in self.dataset.key_columns) for row in rows}
        return written

    def _key(self, fields: dict[bytes, bytes]) -> tuple[Any, ...]:
        return tuple(fields.get(c.encode(), b"").decode() for c in self.dataset.key_columns)

    async def flush(self) -> list[Path]:
        """Write the buffer (one file per date partition), then acknowledge and trim; returns the files written."""
        if not self.buffer:
            return []
        groups: dict[str, list[str]] = defaultdict(list)
        for entry_id, record in self.buffer.items():
            day = dt.datetime.fromtimestamp(self.dataset.date_ms(record) / 1000, tz=dt.UTC).date().isoformat()
            groups[day].append(entry_id)
        ds = self.dataset
        paths = {
            day: ds.directory / f"date={day}" / f"part-{ids[0].replace('-', '_')}-{ds.shard_label}{self.consumer}"
            ".parquet"
            for day, ids in groups.items()
        }
        member = self._member(self.consumer)
        ttl = int(self.settings.consumer_ttl_s * 1000)
        if not await self.store.exporting(member, ttl, [str(p) for p in paths.values()]):
            await self._presumed_dead("its heartbeat expired")
            return []
        try:
            await self._beating(asyncio.to_thread(self._write, groups, paths))
        except Fenced as exc:
            await self._presumed_dead(f"another exporter fenced {exc}")
            return []
        ids = list(self.buffer)
        await self.store.client.xack(self.dataset.stream, self.dataset.group, *ids)
        await self.store.client.hdel(self.store.inflight, member)
        await self.trim()
        self.exported += len(ids)
        self.files += list(paths.values())
        log.debug("exported %d %s to %s", len(ids), self.dataset.name, ", ".join(map(str, paths.values())))
        self._clear()
        return list(paths.values())

    async def _beating(self, work: Awaitable[None]) -> None:
        """Await ``work`` (files being written) while refreshing the heartbeat every third of its TTL.

        So a long write is not taken for a dead exporter, for up to :data:`MAX_WRITE_S`: a write that takes
        longer (a hung filesystem) lets the heartbeat lapse, so its entries are claimed, and the claimer's fence
        keeps a late finish from publishing. A refresh that fails changes nothing.
        """
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        while not task.done():
            await asyncio.wait({task}, timeout=self.settings.consumer_ttl_s / 3)
            if not task.done() and time.monotonic() - started < MAX_WRITE_S:
                with contextlib.suppress(redis.RedisError):
                    await self._heartbeat()
        await task

    def _write(self, groups: dict[str, list[str]], paths: dict[str, Path]) -> None:
        """Write each file in its staging directory, then publish it; Fenced if a claimer took it meanwhile."""
        for day, ids in groups.items():
            path = paths[day]
            table = self.dataset.to_table([self.buffer[i] for i in ids])
            metadata = dict(table.schema.metadata or {})
            metadata[b"scout.schema_version"] = SCHEMA_VERSION.encode()
            metadata[b"scout.dataset"] = self.dataset.name.encode()
            directory = _stage(path)
            try:
                _write_data(directory, table.replace_schema_metadata(metadata))
            except FileNotFoundError as exc:  # a claimer removed the directory before the file was created
                raise Fenced(path) from exc
            except BaseException:
                shutil.rmtree(_staging(path), ignore_errors=True)  # a claimer's fence is a file: it stays
                raise
            finally:
                os.close(directory)
            _publish(path)

    def _clear(self) -> None:
        self.buffer = {}
        self.buffer_bytes = 0
        self.first_buffered = None

    async def trim(self) -> None:
        """Drop stream entries every group (and, for decisions, the learner) has consumed."""
        client, stream = self.store.client, self.dataset.stream
        floor: tuple[int, int] | None = None
        groups: Any = await client.xinfo_groups(stream)
        for group in groups:
            last = group["last-delivered-id"]
            low = stream_id(last.decode() if isinstance(last, bytes) else str(last))
            if group["pending"]:
                summary: Any = await client.xpending(stream, group["name"])
                first = summary["min"]
                low = min(low, stream_id(first.decode() if isinstance(first, bytes) else str(first)))
            floor = low if floor is None else min(floor, low)
        if self.dataset.name == "decisions":
            _, positions = await self.store.positions()
            low = stream_id(positions[self.dataset.shard])
            floor = low if floor is None else min(floor, low)
        if floor is not None:
            await client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}")

    async def final(self) -> None:
        """On shutdown: read what is left and write it."""
        while True:
            if not self._ready:
                await self._prepare()
            if await self.poll() == 0:
                return
            await self.flush()
