"""Where logs live: local paths, or filesystem URIs (``gs://``, ``s3://``, ``hdfs://``, ``file://``) through pyarrow.

A location is a string: a local path, or a URI that :meth:`pyarrow.fs.FileSystem.from_uri` understands (Google
Cloud Storage and S3 are built into the pyarrow wheels; credentials come from the environment as usual for each).
The files found under a directory keep the form of their directory (a URI's files are URIs), so error messages
and the files a Beam pipeline hands to its workers name them the way the user did.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from offline_eval.base import LogError


def locate(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path inside it; a URI that cannot be used raises ``LogError``."""
    text = str(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).absolute())
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise LogError(f"{text}: cannot open this location: {exc}") from exc


def list_files(location: str | Path, suffixes: tuple[str, ...]) -> list[str]:
    """The files of ``location`` (itself, or under it recursively) whose names end in ``suffixes``, sorted.

    A file named directly is returned whatever its suffix. Raises ``LogError`` when nothing is there.
    """
    text = str(location)
    fs, path = locate(text)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [text]
        if info.type != pafs.FileType.Directory:
            raise LogError(f"{text}: no such file or directory")
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except (pa.ArrowException, OSError) as exc:
        raise LogError(f"{text}: cannot list: {exc}") from exc
    names = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(suffixes))
    if not names:
        raise LogError(f"{text}: no {' or '.join(suffixes)} files")
    if "://" not in text:
        return names
    scheme = text.split("://", 1)[0]
    return [f"{scheme}://{name}" for name in names]


def open_file(location: str | Path) -> pa.NativeFile:
    """A random-access file (for Parquet); unreadable locations raise ``LogError``."""
    return _open(location, random_access=True)


def open_stream(location: str | Path) -> pa.NativeFile:
    """A sequential stream (for CSV); unreadable locations raise ``LogError``."""
    return _open(location, random_access=False)


def _open(location: str | Path, random_access: bool) -> pa.NativeFile:
    fs, path = locate(location)
    try:
        return fs.open_input_file(path) if random_access else fs.open_input_stream(path)
    except (pa.ArrowException, OSError) as exc:
        raise LogError(f"{location}: cannot open: {exc}") from exc
