"""The Manager's transport: every failure a real socket can produce is the httpx error for what
happened (a refusal is no timeout), and nothing from aiohttp reaches the caller."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from overseer_operator.http_transport import AiohttpTransport
from overseer_operator.manager_client import ManagerClient, ManagerSettings, ManagerUnavailable
from tests.http_server import json_server

SILENT = None  # the server reads the request and never answers


@contextlib.asynccontextmanager
async def scripted_server(answer: bytes | None) -> AsyncIterator[str]:
    """A server that reads one request, writes ``answer`` and hangs up (or stays silent)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if answer is SILENT:
                await asyncio.sleep(5)
            else:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def transport_client(url: str, seconds: float = 5.0) -> AsyncIterator[httpx.AsyncClient]:
    transport = AiohttpTransport(ssl.create_default_context())
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=seconds) as client:
        yield client


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


async def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    async with transport_client(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(httpx.ConnectError):  # not ConnectTimeout, which is no ConnectError
            await client.get("/")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
        (b"", httpx.RemoteProtocolError),  # hung up before answering
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[{", httpx.ReadError),  # cut short
    ],
    ids=["not-http", "hung-up", "body-cut-short"],
)
async def test_a_broken_answer_is_the_httpx_error_for_it(
    answer: bytes, error: type[httpx.TransportError]
) -> None:
    async with scripted_server(answer) as url, transport_client(url) as client:
        with pytest.raises(error):
            await client.get("/")


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async with scripted_server(SILENT) as url, transport_client(url, seconds=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/")


async def test_connections_are_kept_alive_and_pooled() -> None:
    async with json_server(delay=0.05) as server, transport_client(server.url) as client:
        for _ in range(3):
            assert (await client.get("/")).json() == {}
        assert server.connections == 1
        answers = await asyncio.gather(*(client.get("/") for _ in range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8
        assert server.connections == 8  # one each while all are in flight
        await client.get("/")
        assert server.connections == 8  # and then kept


async def test_a_refused_manager_is_reported_as_refused() -> None:
    """What an SRE reads in the condition and the log: the real cause, not a timeout."""
    url = f"http://127.0.0.1:{closed_port()}"
    settings = ManagerSettings(url, f"{url}/oauth/token", "client", "secret", max_attempts=1)
    async with ManagerClient(settings) as client:
        with pytest.raises(ManagerUnavailable) as caught:
            await client.list_modules("1")
    assert "ConnectError" in str(caught.value)
    assert "timed out" not in str(caught.value)
