"""A TCP proxy the tests put between operator processes and the apiserver, to cut them off.

It runs its own event loop in a background thread, so a synchronous test switches it while the
operators carry on. Three modes:

- ``PASS``: bytes flow both ways.
- ``REFUSE``: the listening socket is closed (a new connection is refused) and every open
  connection is reset: what a stopped apiserver looks like.
- ``BLACKHOLE``: connections are accepted but nothing moves either way (data waits in the socket
  buffers): a network partition, where requests hang until the client's timeout. Back in ``PASS``,
  whatever waited is delivered, late, as TCP retransmission would after a partition heals.

TLS passes through untouched: the client still verifies the apiserver's own certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import yaml


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        with socket.socket() as probe:  # a port of our own, kept across REFUSE and back
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.mode = Mode.PASS
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self._call(self._listen())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set_mode(mode))
        self.mode = mode

    def close(self) -> None:
        self._call(self._set_mode(Mode.REFUSE))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        if mode is Mode.PASS:
            await self._listen()
            self._flowing.set()
            return
        self._flowing.clear()
        if mode is Mode.REFUSE:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        self._writers.add(client)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a partition: the connection is not forwarded yet
            upstream_reader, upstream = await asyncio.open_connection(*self._upstream)
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(client_reader, upstream), self._pump(upstream_reader, client)
            )
        except OSError:
            pass
        finally:
            for writer in (client, upstream):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            await self._flowing.wait()  # blackholed: leave the bytes in the socket buffers
            data = await reader.read(65536)
            if not data:
                break
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0), as a peer that went away does: "connection reset"."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def kubeconfig_through(kubeconfig: Path, proxy: TcpProxy, path: Path) -> Path:
    """A copy of ``kubeconfig`` whose clusters are reached through ``proxy`` (same credentials,
    same CA: the apiserver's certificate is valid for 127.0.0.1, so TLS is still verified)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def server_address(kubeconfig: Path) -> tuple[str, int]:
    """Host and port of the (first) cluster of ``kubeconfig``."""
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").partition(":")
    return host, int(port or 443)
