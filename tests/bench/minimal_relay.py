"""The baseline of the relay benchmark: the least an asyncio process must do to fan out one engine
stream per channel to many viewers (`python -m tests.bench.minimal_relay PORT ENGINE_HOST ENGINE_PORT`).

`GET /?id=X` joins channel X; its first viewer opens the engine session (getstream format=json, then
the playback URL over HTTP/1.0, so the body is raw TS) and every chunk read is written to every
viewer's transport. No NATS, no selection, no buffer for late joiners, no failover, no limits
beyond dropping a viewer whose transport holds over 64 MiB: what the proxy costs beyond this
is what the benchmark's ratio measures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from urllib.parse import parse_qs, urlsplit

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n"
MAX_PENDING = 64 << 20  # an engine sends seconds of backlog at once: never the reason a viewer goes


async def http10(host: str, port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP/1.0 GET whose head has been read: the reader is at the body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


class Relay:
    def __init__(self, engine_host: str, engine_port: int) -> None:
        self.engine = (engine_host, engine_port)
        self.channels: dict[str, set[asyncio.Transport]] = {}
        self.upstreams: set[asyncio.Task] = set()  # referenced, or the loop may collect them mid-stream

    async def viewer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        content_id = parse_qs(urlsplit(target).query)["id"][0]
        writer.write(HEAD)
        viewers = self.channels.get(content_id)
        if viewers is None:
            viewers = self.channels[content_id] = set()
            task = asyncio.create_task(self.upstream(content_id, viewers))
            self.upstreams.add(task)
            task.add_done_callback(self.upstreams.discard)
        viewers.add(writer.transport)
        try:
            await reader.read()  # until the viewer hangs up
        finally:
            viewers.discard(writer.transport)
            writer.close()

    async def upstream(self, content_id: str, viewers: set[asyncio.Transport]) -> None:
        host, port = self.engine
        reader, writer = await http10(host, port, f"/ace/getstream?format=json&id={content_id}&pid={uuid.uuid4().hex}")
        session = json.loads(await reader.read())["response"]
        writer.close()
        playback = urlsplit(session["playback_url"])
        body, connection = await http10(playback.hostname, playback.port, playback.path)
        while chunk := await body.read(65536):
            for transport in list(viewers):
                if transport.get_write_buffer_size() > MAX_PENDING:
                    transport.abort()
                    viewers.discard(transport)
                else:
                    transport.write(chunk)
        connection.close()


async def main(port: int, engine_host: str, engine_port: int) -> None:
    relay = Relay(engine_host, engine_port)
    server = await asyncio.start_server(relay.viewer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # On uvloop, as every service runs (shared.service.run_loop): the ratio compares relays, not loops.
    from shared.service import run_loop

    run_loop(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
