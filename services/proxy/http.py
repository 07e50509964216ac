"""The viewer-facing HTTP/1.1 server: a plain asyncio protocol, GET/HEAD only, one request per connection.

Why not an ASGI server: a relay must push the same bytes to many sockets
and know, per socket, when the kernel stops taking them (pause_writing) so a
slow viewer is skipped, not waited for, and can be cut off at once. The
transport gives exactly that; every response says `Connection: close`.

Bounded: the request head must arrive within PROXY_HEADER_TIMEOUT_S and fit
MAX_HEAD_BYTES (slowloris, huge headers → 408/431), queries MAX_QUERY (414).
Errors are JSON `{"error": ..., "code": N}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.proxy import metrics
from services.proxy.channel import Hub, Viewer
from services.proxy.hls import SEGMENT_PREFIX, Hls, parse_segment_path, relay_segment
from services.proxy.upstream import StartError
from services.proxy.wire import WireError, content_of, parse_query
from shared.config import Config
from shared.errors import describe

log = logging.getLogger("proxy")

MAX_HEAD_BYTES = 16 * 1024
# The kernel's send buffer of a viewer socket: bounded, so a viewer that stops reading is caught by the
# channel's buffer (and dropped) within seconds, instead of the kernel autotuning megabytes for it.
VIEWER_SNDBUF = 128 * 1024
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\nServer: aceorch-proxy\r\n\r\n"
)
KNOWN_PATHS = ("/ace/getstream", "/ace/manifest.m3u8", "/ace/hls", "/ace/status", "/healthz", "/metrics")


class Request:
    def __init__(self, method: str, path: str, query: str) -> None:
        self.method = method
        self.path = path
        self.query = query


def parse_head(head: bytes) -> Request:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise WireError(400, "malformed request line")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        raise WireError(405, f"method {method[:16]} not allowed: GET or HEAD")
    path, _, query = target.partition("?")
    return Request(method, path, query)


def json_response(status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    return _head(status, "application/json", len(payload), extra) + payload


def error_response(status: int, message: str, retry_after_s: float | None = None) -> bytes:
    extra = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s is not None else None
    return json_response(status, {"error": message, "code": status}, extra)


def _head(status: int, content_type: str, length: int, extra: dict[str, str] | None = None) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Connection: close",
        "Server: aceorch-proxy",
    ]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ViewerProtocol(asyncio.Protocol):
    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.viewer: Viewer | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self._handling = False
        self._timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()  # the socket takes more (an HLS segment is written with awaits)
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server hands every protocol a Transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        self._timer = asyncio.get_running_loop().call_later(self.app.config.proxy_header_timeout_s, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self._handling:
            return  # a GET has no body; anything more (pipelining) is ignored, the connection closes after
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end == -1:
            if len(self._head) > MAX_HEAD_BYTES:
                self.reply("?", error_response(431, f"request head over {MAX_HEAD_BYTES} bytes"))
            return
        if end > MAX_HEAD_BYTES:
            self.reply("?", error_response(431, f"request head over {MAX_HEAD_BYTES} bytes"))
            return
        self._handling = True
        self._cancel_timer()
        self.app.handle(self, bytes(self._head[:end]))

    def _head_timeout(self) -> None:
        self._timer = None
        if not self._handling:
            timeout = self.app.config.proxy_header_timeout_s
            self.reply(
                "?", error_response(408, f"request head not received within {timeout:g}s (PROXY_HEADER_TIMEOUT_S)")
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reply(self, path: str, response: bytes) -> None:
        """Send a whole response and close."""
        self.reply_started(path, response[9:12].decode())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def reply_started(self, path: str, status: str = "200") -> None:
        self._handling = True
        self._cancel_timer()
        metrics.REQUESTS.labels(path=path if path in KNOWN_PATHS else "other", code=status).inc()

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.viewer is not None:
            self.viewer.paused = True

    def resume_writing(self) -> None:
        self.writable.set()
        if self.viewer is not None:
            self.viewer.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.viewer is not None:
            self.viewer.lost()


class ProxyApp:
    """Routes a request head to its handler; handlers run as tasks the app holds."""

    def __init__(self, hub: Hub, hls: Hls, config: Config) -> None:
        self.hub = hub
        self.hls = hls
        self.config = config
        self.tasks: set[asyncio.Task[None]] = set()
        self.routes: dict[str, Callable[[ViewerProtocol, Request], Awaitable[None]]] = {
            "/ace/getstream": self.getstream,
            "/ace/manifest.m3u8": self.manifest,
            "/ace/status": self.status,
            "/healthz": self.healthz,
            "/metrics": self.metrics,
        }

    def handle(self, conn: ViewerProtocol, head: bytes) -> None:
        try:
            request = parse_head(head)
        except WireError as exc:
            conn.reply("?", error_response(exc.status, str(exc)))
            return
        route = self.segment if request.path.startswith(SEGMENT_PREFIX) else self.routes.get(request.path)
        if route is None:
            conn.reply(request.path, error_response(404, f"no such path: {request.path[:100]}"))
            return
        task = asyncio.get_running_loop().create_task(self._run(route, conn, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self, route: Callable[[ViewerProtocol, Request], Awaitable[None]], conn: ViewerProtocol, request: Request
    ) -> None:
        try:
            await route(conn, request)
        except WireError as exc:
            conn.reply(request.path, error_response(exc.status, str(exc)))
        except Exception as exc:  # a bug: a generic 500 out, the traceback in our log
            log.exception("%s %s failed: %s", request.method, request.path, describe(exc))
            conn.reply(request.path, error_response(500, "internal error"))

    async def healthz(self, conn: ViewerProtocol, request: Request) -> None:
        conn.reply(request.path, json_response(200, {"ok": True}))

    async def metrics(self, conn: ViewerProtocol, request: Request) -> None:
        body = generate_latest()
        conn.reply(request.path, _head(200, CONTENT_TYPE_LATEST, len(body)) + body)

    async def status(self, conn: ViewerProtocol, request: Request) -> None:
        channels = [channel.status() for channel in self.hub.channels.values()]
        hls = [session.status() for session in self.hls.sessions.values()]
        conn.reply(
            request.path, json_response(200, {"proxy": self.hub.upstream.member_id, "sessions": channels, "hls": hls})
        )

    async def manifest(self, conn: ViewerProtocol, request: Request) -> None:
        content = content_of(parse_query(request.query))
        session = self.hls.session_for(content)
        timeout = self.config.proxy_start_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(session.ready)
            text = await session.playlist()
        except StartError as exc:
            conn.reply(request.path, error_response(exc.status, str(exc), exc.retry_after_s))
            return
        except TimeoutError:
            conn.reply(
                request.path, error_response(504, f"no engine session within {timeout:g}s (PROXY_START_TIMEOUT_S)")
            )
            return
        body = text.encode() if request.method == "GET" else b""
        head = _head(200, "application/vnd.apple.mpegurl", len(text.encode()), {"Cache-Control": "no-cache"})
        conn.reply(request.path, head + body)

    async def segment(self, conn: ViewerProtocol, request: Request) -> None:
        """`/ace/hls/<token>/<n>.ts`: a segment of an HLS session, streamed from its engine."""
        token, number = parse_segment_path(request.path)
        session = self.hls.by_token(token)
        url = session.segment_url(number) if session is not None else None
        if url is None:
            gone = f"segment {number} is not (or no longer) listed" if session else "unknown or ended HLS session"
            conn.reply("/ace/hls", error_response(404, gone))
            return
        transport = conn.transport
        assert transport is not None and session is not None

        def send_head(length: int | None) -> None:
            conn.reply_started("/ace/hls")
            lines = ["HTTP/1.1 200 OK", "Content-Type: video/mp2t", "Connection: close", "Server: aceorch-proxy"]
            lines += [f"Content-Length: {length}"] if length is not None else []
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

        async def write(chunk: bytes) -> None:
            if conn.closed.done():
                raise ConnectionResetError("the viewer hung up")
            if request.method == "GET":
                transport.write(chunk)
            if session.session is not None:
                session.session.bytes += len(chunk)
            if not conn.writable.is_set():  # the viewer reads slower than the engine sends: wait for it
                drained = asyncio.ensure_future(conn.writable.wait())
                either: list[asyncio.Future[Any]] = [drained, conn.closed]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()

        try:
            await relay_segment(self.hls.upstream.http, url, send_head, write, transport.abort)
        except StartError as exc:
            conn.reply("/ace/hls", error_response(exc.status, str(exc)))
            return
        except ConnectionResetError:
            return
        session.segments += 1
        transport.close()

    async def getstream(self, conn: ViewerProtocol, request: Request) -> None:
        content = content_of(parse_query(request.query))
        if request.method == "HEAD":
            conn.reply(request.path, STREAM_HEAD)
            return
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIEWER_SNDBUF)
        began = time.monotonic()
        assert conn.transport is not None
        viewer = Viewer(conn.transport, conn.peer)
        conn.viewer = viewer
        if conn.closed.done():  # gone before we got here
            return
        channel = self.hub.join(content, viewer)
        try:
            await _first_bytes(channel.first_bytes, conn.closed, self.config.proxy_start_timeout_s)
        except StartError as exc:
            conn.viewer = None
            viewer.lost()
            conn.reply(request.path, error_response(exc.status, str(exc), exc.retry_after_s))
            return
        except TimeoutError:
            conn.viewer = None
            viewer.lost()
            conn.reply(
                request.path,
                error_response(
                    504, f"no stream bytes within {self.config.proxy_start_timeout_s:g}s (PROXY_START_TIMEOUT_S)"
                ),
            )
            return
        if viewer.closed:
            return  # the viewer left while the stream started (a zap)
        if channel.task.done():  # started and already over (its engines failed) before we got to write
            conn.viewer = None
            viewer.lost()
            conn.reply(request.path, error_response(502, "the stream ended before it could be relayed"))
            return
        metrics.REQUESTS.labels(path=request.path, code="200").inc()
        viewer.on_first_byte = lambda: metrics.FIRST_BYTE.observe(time.monotonic() - began)
        conn.transport.write(STREAM_HEAD)
        viewer.go_live(channel.buffer.join_offset())


async def _first_bytes(first: asyncio.Future[None], closed: asyncio.Future[None], timeout_s: float) -> None:
    """Until the channel has bytes (or failed: its StartError), the viewer hung up, or `timeout_s` passed."""
    async with asyncio.timeout(timeout_s):
        await asyncio.wait([first, closed], return_when=asyncio.FIRST_COMPLETED)
    if first.done():
        first.result()  # raises the channel's StartError
