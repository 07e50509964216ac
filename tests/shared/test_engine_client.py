"""What a probe reads from an engine is bounded: real HTTP servers on loopback that never stop talking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shared.engine_client import new_client, probe

HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


class Server:
    """Answers every connection with `reply(writer)`; counts the bytes it managed to send."""

    def __init__(self, reply: Callable[[asyncio.StreamWriter, Server], object]) -> None:
        self.reply = reply
        self.sent = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.reply(writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the probe hung up: what we want
        finally:
            writer.close()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)


@pytest.fixture
async def serve() -> AsyncIterator[Callable]:
    servers: list[asyncio.Server] = []

    async def start(reply) -> Server:
        server = Server(reply)
        listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
        servers.append(listener)
        server.port = listener.sockets[0].getsockname()[1]
        return server

    yield start
    for listener in servers:
        listener.close()


async def endless_spaces(writer: asyncio.StreamWriter, server: Server) -> None:
    await server.write(writer, HEADERS + b"\r\n")  # no length: the body ends when the connection does
    chunk = b" " * 65536
    while True:
        await server.write(writer, chunk)


async def huge_declared(writer: asyncio.StreamWriter, server: Server) -> None:
    await server.write(writer, HEADERS + b"Content-Length: 1000000000\r\n\r\n{")
    await asyncio.sleep(30)


async def status_reply(writer: asyncio.StreamWriter, server: Server) -> None:
    body = b'{"result": {"version": {"version": "3.2.11"}}, "error": null}'
    await server.write(writer, HEADERS + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def test_an_endless_reply_fails_the_probe_after_a_bounded_read(serve):
    server = await serve(endless_spaces)
    async with new_client() as client:
        result = await probe(client, "127.0.0.1", server.port, timeout_s=5)
    assert (result.ok, result.error) == (False, "response over 65536 bytes")
    # What the server got out is what we read plus what loopback's socket buffers hold (a few MiB);
    # reading it all for the 5 s timeout is gigabytes.
    assert server.sent < 32 * 1024 * 1024, f"{server.sent} bytes sent"


async def test_a_reply_declaring_a_huge_length_fails_at_once(serve):
    server = await serve(huge_declared)
    async with new_client() as client:
        result = await probe(client, "127.0.0.1", server.port, timeout_s=20)
    assert (result.ok, result.error) == (False, "response over 65536 bytes")
    assert result.latency_ms < 10_000  # not the 30 s the server would keep the connection open for


async def test_a_normal_status_reply_still_passes(serve):
    server = await serve(status_reply)
    async with new_client() as client:
        result = await probe(client, "127.0.0.1", server.port, timeout_s=5)
    assert (result.ok, result.error, result.version) == (True, None, "3.2.11")
