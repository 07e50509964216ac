"""acesim — a simulated AceStream engine (standard library only).

The real engine can't be installed in tests or the demo, so this stands in for
it on the wire: the same URLs and JSON shapes as the engine's HTTP API on
6878, a cache directory that fills while streams play, and faults on demand
through ``/__sim/``.  ``acesim --ports A-B`` runs one engine per port in ONE
process and ONE event loop, so a 1,000-engine fleet costs one interpreter.

The file is self-contained on purpose: it can be copied alone into a minimal
image and run with bare ``python3``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Callable, Coroutine
from urllib.parse import parse_qsl, urlsplit

SIM_VERSION = "1.0"
SERVER_HEADER = f"acesim/{SIM_VERSION}"
ENGINE_VERSION = {"code": 3021100, "platform": "linux", "version": "3.2.11"}
ENGINE_REVISION = f"acesim-{SIM_VERSION}"

# Timings that shape what clients observe.
PREBUF_S = 2.0  # a new session reports "prebuf" this long, then "dl"
SESSION_IDLE_TIMEOUT_S = 60.0  # no player and no stat for this long → dropped
TICK_S = 1.0  # cache growth / idle sweep period
CACHE_BYTES_PER_TICK = 64 * 1024  # ~64 KiB/s per live session
STREAM_INTERVAL_S = 0.25  # playback writes one chunk this often

DEFAULT_SLOW_MS = 1000
DEFAULT_ERROR_CODE = 500
FAULT_MODES = ("none", "hang", "slow", "error", "badjson", "refuse", "crash")
BAD_JSON = b'{"result": {"playlist_lo'
LISTEN_BACKLOG = 128
DEAD_SESSION = "unknown playback session id"


def _ts_packets(count: int) -> bytes:
    """`count` MPEG-TS packets on one PID with a cycling continuity counter.

    Players and proxies sniff for the 0x47 sync byte every 188 bytes; the
    payload is filler.  Use a multiple of 16 packets so back-to-back chunks
    keep the continuity counter consistent.
    """
    pid = 0x0100
    packets = bytearray()
    for i in range(count):
        header = bytes((0x47, (pid >> 8) & 0x1F, pid & 0xFF, 0x10 | (i & 0x0F)))
        packets += header + b"\xff" * 184
    return bytes(packets)


STREAM_CHUNK = _ts_packets(80)  # 15,040 bytes per 0.25 s ≈ 60 KB/s
CACHE_CHUNK = _ts_packets(349)[:CACHE_BYTES_PER_TICK]  # 64 KiB per tick


def log(message: str) -> None:
    print(f"acesim: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# HTTP/1.1: just enough of it (request line, headers, keep-alive, small bodies)
# --------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]  # names lower-cased; last value wins

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after this response
    after: Callable[[], None] | None = None  # runs once the reply is sent


def json_response(payload: Any, status: int = 200, **kwargs: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), **kwargs)


def dead_session(status: int = 200) -> Response:
    return json_response({"response": None, "error": DEAD_SESSION}, status)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    await _discard_body(reader, headers)
    url = urlsplit(target)
    # First value wins, like the engine's own query parsing.
    query: dict[str, str] = {}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Request(method.upper(), url.path or "/", query, version, headers)


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    # Engine API calls are GETs; bodies are read only to keep the stream framed.
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(501, "chunked request bodies are not supported")
    length = headers.get("content-length", "0") or "0"
    if not length.isdigit():
        raise BadRequest(400, "bad content-length")
    if int(length):
        await reader.readexactly(int(length))


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_response(
    writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head_only: bool
) -> None:
    headers = {
        "Server": SERVER_HEADER,
        "Date": formatdate(usegmt=True),
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "keep-alive" if keep_alive else "close",
        **response.headers,
    }
    writer.write(_head(response.status, headers))
    if not head_only:
        writer.write(response.body)
    await writer.drain()


# --------------------------------------------------------------------------
# Engine state
# --------------------------------------------------------------------------


@dataclass
class Fault:
    mode: str = "none"
    ms: int = DEFAULT_SLOW_MS
    code: int = DEFAULT_ERROR_CODE

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "ms": self.ms, "code": self.code}


@dataclass
class Session:
    """One content session; every getstream call for it adds a player key."""

    infohash: str
    started_mono: float
    started_at: float  # unix time, for /__sim/state
    last_seen: float  # monotonic; any playback chunk or stat refreshes it
    keys: list[str] = field(default_factory=list)
    bytes: int = 0  # bytes this session appended to the cache
    players: int = 0  # open playback connections
    ended: bool = False

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started_mono)


class Engine:
    """One simulated engine: a listening socket, its sessions and its cache."""

    def __init__(self, sim: Simulator, host: str, port: int, cache_dir: str) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.cache_dir = cache_dir
        self.fault = Fault()
        self.sessions: dict[str, Session] = {}  # infohash → session
        self.keys: dict[str, str] = {}  # playback key → infohash
        self.requests = 0  # non-/__sim/ requests received
        self.crashed = False
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self._relisten: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # keep references: the loop holds tasks weakly
        self._client_session_ids = itertools.count(random.randint(1, 10_000))
        self._write_error_logged = False

    # -- lifecycle ---------------------------------------------------------

    async def listen(self) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, backlog=LISTEN_BACKLOG
        )

    def connection_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in self._connections.values() if task is not None]

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop_listening(self) -> None:
        """Close the listening socket and every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.close()

    def refuse(self, for_s: float | None) -> None:
        self.stop_listening()
        if for_s is not None:
            self._relisten = asyncio.get_running_loop().call_later(
                for_s, lambda: self._spawn(self._recover_from_refuse())
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover_from_refuse(self) -> None:
        self._relisten = None
        if self.fault.mode == "refuse" and not self.crashed:
            self.fault = Fault()
            await self.resume_listening()

    async def resume_listening(self) -> None:
        if self.listening or self.crashed:
            return
        try:
            await self.listen()
            log(f"engine {self.port} listening again")
        except OSError as exc:
            log(f"engine {self.port} could not listen again: {exc}")

    def crash(self) -> None:
        """Stop for good: no socket, no sessions (the process may exit too)."""
        self.crashed = True
        self._cancel_relisten()
        self.stop_listening()
        for session in self.sessions.values():
            session.ended = True
        self.sessions.clear()
        self.keys.clear()
        log(f"engine {self.port} crashed (simulated)")
        self.sim.engine_crashed(self)

    def _cancel_relisten(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None

    # -- periodic work -----------------------------------------------------

    def tick(self, now: float) -> None:
        """Grow the cache of live sessions and drop abandoned ones."""
        for session in list(self.sessions.values()):
            if session.players == 0 and now - session.last_seen > SESSION_IDLE_TIMEOUT_S:
                self.end_session(session)
                continue
            session.bytes += self._append_cache(session.infohash)

    def _append_cache(self, infohash: str) -> int:
        # Open per write: the janitor may delete files or the whole directory
        # under us, and append-mode open recreates whatever is missing.
        path = os.path.join(self.cache_dir, f"{infohash}.dat")
        try:
            try:
                handle = open(path, "ab")
            except FileNotFoundError:
                os.makedirs(self.cache_dir, exist_ok=True)
                handle = open(path, "ab")
            with handle:
                handle.write(CACHE_CHUNK)
        except OSError as exc:
            if not self._write_error_logged:  # a full disk must not flood the log
                log(f"engine {self.port} cache write failed: {exc}")
                self._write_error_logged = True
            return 0
        return len(CACHE_CHUNK)

    def cache_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.cache_dir):
            for name in files:
                with contextlib.suppress(OSError):  # deleted while we walk
                    total += os.stat(os.path.join(root, name)).st_size
        return total

    # -- sessions ----------------------------------------------------------

    def open_session(self, infohash: str) -> tuple[Session, str]:
        """New player key on the content's one session (created if needed)."""
        now = time.monotonic()
        session = self.sessions.get(infohash)
        if session is None:
            session = Session(infohash, now, time.time(), now)
            self.sessions[infohash] = session
        key = secrets.token_hex(20)
        session.keys.append(key)
        session.last_seen = now
        self.keys[key] = infohash
        return session, key

    def find_session(self, infohash: str, key: str) -> Session | None:
        if self.keys.get(key) != infohash:
            return None
        return self.sessions.get(infohash)

    def end_session(self, session: Session) -> None:
        session.ended = True
        self.sessions.pop(session.infohash, None)
        for key in session.keys:
            self.keys.pop(key, None)

    # -- connections -------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._connections[writer] = asyncio.current_task()
        try:
            while not self.crashed:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    response = json_response({"error": str(exc)}, exc.status)
                    await send_response(writer, response, keep_alive=False, head_only=False)
                    break
                if request is None:
                    break
                if not await self._handle(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _handle(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must close."""
        if request.path.startswith("/__sim/"):
            return await self._reply(request, writer, self.sim.control(self, request))
        self.requests += 1
        fault = self.fault
        if fault.mode == "hang":
            await _wait_for_client_close(reader)
            return False
        if fault.mode == "slow":
            await asyncio.sleep(fault.ms / 1000)
        if fault.mode == "error":
            return await self._reply(request, writer, json_response({"error": "simulated error"}, fault.code))
        if fault.mode == "badjson":
            return await self._reply(request, writer, Response(200, BAD_JSON))
        if request.path.startswith("/ace/r/"):
            return await self._play(request, writer)
        try:
            response = self._route(request)
        except Exception as exc:  # a bug here must not kill the other engines
            log(f"engine {self.port} error on {request.path}: {exc!r}")
            response = json_response({"error": "internal error"}, 500)
        return await self._reply(request, writer, response)

    async def _reply(self, request: Request, writer: asyncio.StreamWriter, response: Response) -> bool:
        keep_alive = request.keep_alive and not response.close
        await send_response(writer, response, keep_alive, head_only=request.method == "HEAD")
        if response.after is not None:
            response.after()
        return keep_alive

    # -- engine API --------------------------------------------------------

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/server/api":
            return self._server_api(request.query.get("method"))
        if path == "/webui/api/service":
            return self._webui_service(request.query.get("method"))
        if path == "/ace/getstream":
            return self._getstream(request)
        for prefix, handler in (("/ace/stat/", self._stat), ("/ace/cmd/", self._command)):
            if path.startswith(prefix):
                infohash, key = _session_path(path[len(prefix):])
                return handler(infohash, key, request)
        return json_response({"error": "not found"}, 404)

    def _server_api(self, method: str | None) -> Response:
        if method == "get_status":
            return json_response({"result": {"playlist_loaded": True, "version": ENGINE_VERSION}})
        if method == "get_network_connection_status":
            return json_response({"result": {"connected": True}})
        return json_response({"result": None, "error": f"unknown method: {method or '(none)'}"})

    def _webui_service(self, method: str | None) -> Response:
        if method == "get_version":
            version = {**ENGINE_VERSION, "revision": ENGINE_REVISION}
            return json_response({"result": version, "error": None})
        return json_response({"result": None, "error": f"unknown method: {method or '(none)'}"})

    def _getstream(self, request: Request) -> Response:
        query = request.query
        content_id = query.get("id") or query.get("content_id")
        infohash = query.get("infohash", "").lower() or (
            hashlib.sha1(content_id.encode()).hexdigest() if content_id else ""
        )
        if not infohash:
            return json_response({"response": None, "error": "missing content id"})
        session, key = self.open_session(infohash)
        base = f"http://{request.headers.get('host') or f'{self.host}:{self.port}'}"
        playback_url = f"{base}/ace/r/{infohash}/{key}"
        if query.get("format") != "json":
            return Response(302, content_type="text/plain", headers={"Location": playback_url})
        return json_response({
            "response": {
                "playback_url": playback_url,
                "stat_url": f"{base}/ace/stat/{infohash}/{key}",
                "command_url": f"{base}/ace/cmd/{infohash}/{key}",
                "infohash": infohash,
                "playback_session_id": key,
                "is_live": 1,
                "is_encrypted": 0,
                "client_session_id": next(self._client_session_ids),
            },
            "error": None,
        })

    def _stat(self, infohash: str, key: str, request: Request) -> Response:
        session = self.find_session(infohash, key)
        if session is None:
            return dead_session()
        now = time.monotonic()
        session.last_seen = now
        return json_response({"response": _stat_body(session, now), "error": None})

    def _command(self, infohash: str, key: str, request: Request) -> Response:
        session = self.find_session(infohash, key)
        if session is None:
            return dead_session()
        if request.query.get("method") != "stop":
            return json_response({"response": None, "error": "unknown method"})
        # Stop on any key ends the content session for all its players.
        self.end_session(session)
        return json_response({"response": "ok", "error": None})

    async def _play(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        infohash, key = _session_path(request.path[len("/ace/r/"):])
        session = self.find_session(infohash, key)
        if session is None:
            return await self._reply(request, writer, dead_session(404))
        # HTTP/1.1 gets a chunked body; HTTP/1.0 clients read until close.
        chunked = request.version == "HTTP/1.1"
        headers = {"Server": SERVER_HEADER, "Date": formatdate(usegmt=True), "Content-Type": "video/mp2t"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        headers["Connection"] = "close"
        writer.write(_head(200, headers))
        if request.method == "HEAD":
            await writer.drain()
            return False
        session.players += 1
        try:
            await self._stream_until_ended(session, writer, chunked)
        finally:
            session.players -= 1
            session.last_seen = time.monotonic()
        return False

    async def _stream_until_ended(
        self, session: Session, writer: asyncio.StreamWriter, chunked: bool
    ) -> None:
        frame = b"%x\r\n%s\r\n" % (len(STREAM_CHUNK), STREAM_CHUNK) if chunked else STREAM_CHUNK
        while not session.ended and not writer.is_closing():
            writer.write(frame)
            await writer.drain()  # raises once the player hangs up
            session.last_seen = time.monotonic()
            await asyncio.sleep(STREAM_INTERVAL_S)
        if chunked and not writer.is_closing():
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    # -- /__sim/ control ---------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "fault": self.fault.as_dict(),
            "sessions": [
                {"infohash": s.infohash, "keys": list(s.keys), "started_at": s.started_at,
                 "bytes": s.bytes}
                for s in self.sessions.values()
            ],
            "cache_bytes": self.cache_bytes(),
            "cache_dir": self.cache_dir,
            "requests": self.requests,
        }

    def set_fault(self, fault: Fault, for_s: float | None) -> Callable[[], None] | None:
        """Record the fault now; return the part that must wait for the reply.

        refuse and crash close sockets, so they act only after the control
        request has been answered (it may have arrived on this very engine).
        """
        self._cancel_relisten()
        self.fault = fault
        log(f"engine {self.port} fault → {fault.mode}")
        if fault.mode == "refuse":
            return lambda: self.refuse(for_s)
        if fault.mode == "crash":
            return self.crash
        if not self.listening:  # leaving refuse: listen again
            self._spawn(self.resume_listening())
        return None


def _session_path(rest: str) -> tuple[str, str]:
    infohash, _, key = rest.strip("/").partition("/")
    return infohash.lower(), key


def _stat_body(session: Session, now: float) -> dict[str, Any]:
    elapsed = session.elapsed(now)
    downloaded = int(elapsed * CACHE_BYTES_PER_TICK / TICK_S)
    wall = int(time.time())
    live_first = wall - 3600  # a one-hour live window, like a typical channel
    return {
        "status": "prebuf" if elapsed < PREBUF_S else "dl",
        "peers": 5 + int(session.infohash[:4], 16) % 20,
        "speed_down": 60 + random.randint(0, 8),
        "speed_up": random.randint(5, 20),
        "downloaded": downloaded,
        "uploaded": downloaded // 4,
        "livepos": {
            "pos": str(wall - 10),
            "live_first": str(live_first),
            "live_last": str(wall),
            "first_ts": str(live_first),
            "last_ts": str(wall),
            "buffer_pieces": "15",
        },
    }


async def _wait_for_client_close(reader: asyncio.StreamReader) -> None:
    # "hang": keep the connection open and silent until the client gives up.
    while await reader.read(65536):
        pass


# --------------------------------------------------------------------------
# The process: many engines, one loop
# --------------------------------------------------------------------------


class ListenError(Exception):
    pass


class Simulator:
    def __init__(self, host: str, ports: list[int], cache_root: str, single: bool) -> None:
        self.single = single
        self.engines: dict[int, Engine] = {}
        for port in ports:
            cache_dir = cache_root if single else os.path.join(cache_root, str(port))
            self.engines[port] = Engine(self, host, port, cache_dir)
        self.stopped = asyncio.Event()
        self.exit_code = 0

    async def start(self) -> None:
        for engine in self.engines.values():
            try:
                await engine.listen()
            except OSError as exc:
                raise ListenError(f"cannot listen on {engine.host}:{engine.port}: {exc}") from None
            log(f"engine listening on {engine.host}:{engine.port} (cache {engine.cache_dir})")

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for engine in self.engines.values():
                if engine.sessions:
                    engine.tick(now)

    def engine_crashed(self, engine: Engine) -> None:
        if self.single:  # a lone engine crashing is the process dying
            self.exit_code = 1
            self.stopped.set()

    async def close(self) -> None:
        """Close every socket and let connection handlers finish on their own.

        Handlers left for asyncio.run to cancel make Python 3.11's streams
        module log a CancelledError traceback per connection.
        """
        for engine in self.engines.values():
            engine.stop_listening()
        tasks = [task for engine in self.engines.values() for task in engine.connection_tasks()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def control(self, engine: Engine, request: Request) -> Response:
        """Answer /__sim/ requests; `port=X` targets another engine here."""
        target = engine
        if "port" in request.query:
            port = _int_or_none(request.query["port"])
            if port not in self.engines:
                error = f"no engine on port {request.query['port']}"
                return json_response({"ok": False, "error": error}, 404)
            target = self.engines[port]
        if request.path == "/__sim/state":
            return json_response(target.state())
        if request.path == "/__sim/fault":
            return _set_fault(target, request.query)
        return json_response({"error": "not found"}, 404)


def _set_fault(target: Engine, query: dict[str, str]) -> Response:
    parsed = _parse_fault(query)
    if isinstance(parsed, str):
        return json_response({"ok": False, "error": parsed}, 400)
    if target.crashed:
        return json_response({"ok": False, "error": f"engine {target.port} has crashed"}, 409)
    fault, for_s = parsed
    apply_after_reply = target.set_fault(fault, for_s)
    return json_response({"ok": True, "mode": fault.mode}, after=apply_after_reply)


def _parse_fault(query: dict[str, str]) -> tuple[Fault, float | None] | str:
    """The fault and its `for_s`, or what is wrong with the query."""
    mode = query.get("mode", "")
    if mode not in FAULT_MODES:
        return f"mode must be one of {', '.join(FAULT_MODES)}"
    ms = _int_or_none(query.get("ms", str(DEFAULT_SLOW_MS)))
    if ms is None or ms < 0:
        return "ms must be a non-negative integer"
    code = _int_or_none(query.get("code", str(DEFAULT_ERROR_CODE)))
    if code is None or not 100 <= code <= 599:
        return "code must be an HTTP status (100-599)"
    for_s = _float_or_none(query["for_s"]) if "for_s" in query else None
    if "for_s" in query and for_s is None:
        return "for_s must be a non-negative number of seconds"
    return Fault(mode, ms, code), for_s


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_port_range(text: str) -> list[int]:
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not 1 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return list(range(first, last + 1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="acesim", description="Simulated AceStream engine(s).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--port", type=int, help="run one engine on this port")
    which.add_argument("--ports", type=parse_port_range, help="run one engine per port, e.g. 20000-20999")
    which.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--cache-dir", help="cache directory (with --ports: one subdirectory per port)")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds to wait before listening")
    return parser.parse_args(argv)


def raise_fd_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: 1,000 engines need >1,024 fds."""
    try:
        import resource
    except ImportError:  # not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        log(f"warning: open-file limit {soft} is low for {needed} listening sockets")


async def run(args: argparse.Namespace, cache_root: str) -> int:
    ports = [args.port] if args.port is not None else args.ports
    sim = Simulator(args.host, ports, cache_root, single=args.port is not None)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sim.stopped.set)
    if args.startup_delay > 0:  # a signal during the delay still exits cleanly
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sim.stopped.wait(), args.startup_delay)
    if sim.stopped.is_set():
        return 0
    ticker = asyncio.create_task(sim.tick_forever())
    try:
        await sim.start()
        await sim.stopped.wait()
    finally:
        ticker.cancel()
        await sim.close()
    return sim.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        print(f"acesim {SIM_VERSION} (engine {ENGINE_VERSION['version']})")
        return 0
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"acesim: bad port {args.port}", file=sys.stderr)
        return 2
    raise_fd_limit(len(args.ports or [args.port]) + 64)
    temp_cache = args.cache_dir is None
    cache_root = tempfile.mkdtemp(prefix="acesim-") if temp_cache else args.cache_dir
    try:
        return asyncio.run(run(args, cache_root))
    except ListenError as exc:
        log(str(exc))
        return 1
    finally:
        if temp_cache:  # our own scratch space; a given --cache-dir is kept
            shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
