"""A minimal keep-alive HTTP/1.1 server on a real socket, for what a mock transport cannot show
(connections, the HTTP stack's own work): it answers every request 200 with ``{}``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass
class JsonServer:
    url: str
    delay: float
    # Requests whose request line this accepts are answered only once ``release`` is set.
    hold: Callable[[bytes], bool]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    open: int = 0  # connections not closed yet
    requests: int = 0
    held: int = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        await reader.readexactly(int(value))
                self.requests += 1
                if self.hold(head.partition(b"\r\n")[0]):
                    self.held += 1
                    await self.release.wait()
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def json_server(
    delay: float = 0.0, hold: Callable[[bytes], bool] = lambda line: False
) -> AsyncIterator[JsonServer]:
    state = JsonServer("", delay, hold)
    server = await asyncio.start_server(state.answer, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield state
