"""A TCP relay to Redis that holds back Redis's replies on demand: a stalled process, or Redis slow to answer."""

from __future__ import annotations

import asyncio
import urllib.parse


class StallingRelay:
    """A TCP relay to Redis that can hold back Redis's replies to one client: a process that stalls (a pause, a long
    GC, a descheduled VM) after Redis ran its command and before it saw the answer."""

    def __init__(self, url: str) -> None:
        self.url = urllib.parse.urlparse(url)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.held = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.url.scheme == "unix":
            redis_r, redis_w = await asyncio.open_unix_connection(self.url.path)
        else:
            redis_r, redis_w = await asyncio.open_connection(self.url.hostname, self.url.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            while data := await src.read(65536):
                if replies and not self.flowing.is_set():
                    self.held += 1
                    await self.flowing.wait()
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(client_r, redis_w, False), pump(redis_r, client_w, True), return_exceptions=True)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
