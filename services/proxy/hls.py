"""HLS through the proxy: one engine HLS session per content, shared by every HLS viewer of it.

The first `GET /ace/manifest.m3u8?id=…` opens the session like a channel
does (`Upstream.open` on the engine's manifest.m3u8: select → engine session
→ `stream.started`). Each playlist request fetches the engine's playlist (at
most once a second, whatever the viewer count) and rewrites its segment URIs
to `/ace/hls/<token>/<n>.ts`, numbered by this session; a segment request
is streamed from the engine URL behind that number. Viewers hold no
connection, so "the last viewer left" means no playlist or segment request
for `PROXY_LINGER_S` + IDLE_TARGETS target durations; then the engine
session is stopped and `stream.ended {viewers_left}` published. An engine
that fails (its playlist unreachable or gone) ends the session with
`engine_failed`: that request gets a 502/504, the next opens a new session.
No stats polling and no failover here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from services.proxy import metrics
from services.proxy.members import leave_all
from services.proxy.upstream import Session, StartError, Upstream
from services.proxy.wire import (
    MAX_PLAYLIST_BYTES,
    Content,
    WireError,
    playlist_text,
    rewrite_playlist,
    segment_uris,
    target_duration,
)
from shared.config import Config
from shared.engine_client import IDENTITY, ResponseTooLarge, get_capped
from shared.errors import describe

log = logging.getLogger("proxy")

MANIFEST_PATH = "/ace/manifest.m3u8"
SEGMENT_PREFIX = "/ace/hls/"
# A live player reloads the playlist about once per target duration and fetches segments in between,
# so it is never silent for much more than one; three tolerate a late reload or a slow segment.
IDLE_TARGETS = 3
DEFAULT_TARGET_S = 6.0  # until the engine's playlist says (HLS's usual segment length)
MAX_TARGET_S = 20.0  # a hostile #EXT-X-TARGETDURATION must not keep a session for hours
PLAYLIST_CACHE_S = 1.0  # viewers of one content share one engine playlist fetch per second
PLAYLIST_TIMEOUT_S = 5.0
SEGMENT_TIMEOUT_S = 30.0  # engine connect to the viewer's last byte
MAX_SEGMENT_BYTES = 64 * 1024 * 1024  # 10 s at 50 Mbit/s
REMEMBERED = 64  # segment numbers a session still answers; a live window is a few


class HlsSession:
    def __init__(self, hls: Hls, content: Content) -> None:
        self.hls = hls
        self.content = content
        self.token = secrets.token_urlsafe(16)
        self.session: Session | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_request = time.monotonic()
        self.target_s = DEFAULT_TARGET_S
        self.urls: dict[int, str] = {}  # our segment number → engine URL (insertion order = age)
        self.numbers: dict[str, int] = {}  # engine URL → our number
        self.next_number = 0
        self.segments = 0
        self.leaving = asyncio.Event()
        self.reason = "viewers_left"
        self._lock = asyncio.Lock()
        self._cached: tuple[float, str] | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"hls {content.label}")

    @property
    def accepting(self) -> bool:
        return not self.leaving.is_set() and not self.task.done()

    @property
    def idle_limit_s(self) -> float:
        return self.hls.config.proxy_linger_s + IDLE_TARGETS * self.target_s

    def touch(self) -> None:
        self.last_request = time.monotonic()

    def leave(self, reason: str) -> None:
        if not self.leaving.is_set():
            self.reason = reason
            self.leaving.set()

    async def _run(self) -> None:
        upstream = self.hls.upstream
        try:
            deadline = time.monotonic() + self.hls.config.proxy_start_timeout_s
            try:
                self.session = await upstream.open(self.content, [], deadline, path=MANIFEST_PATH)
            except StartError as exc:
                self.ready.set_exception(exc)
                self.ready.exception()  # retrieved: every waiting viewer may be gone
                return
            self.ready.set_result(None)
            while not self.leaving.is_set():
                left = self.last_request + self.idle_limit_s - time.monotonic()
                if left <= 0:
                    self.leave("viewers_left")
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self.leaving.wait()
            await upstream.end(self.session, self.reason)
        except Exception as exc:  # a bug here must end this session only, visibly
            log.exception("HLS session %s failed: %s", self.content.label, describe(exc))
            if not self.ready.done():
                self.ready.set_exception(StartError(500, "internal error"))
                self.ready.exception()
        finally:
            self.hls.forget(self)

    # ------------------------------------------------------------ playlist

    async def playlist(self) -> str:
        """The engine's playlist with segment URIs through this proxy (StartError when the engine failed)."""
        async with self._lock:
            if self.leaving.is_set():  # failed (or ending) while this request waited for the lock
                raise StartError(502, f"the HLS session ended ({self.reason})")
            if self._cached is not None and time.monotonic() - self._cached[0] < PLAYLIST_CACHE_S:
                return self._cached[1]
            text = await self._fetch()
            self._cached = (time.monotonic(), text)
            return text

    async def _fetch(self) -> str:
        assert self.session is not None
        url = self.session.playback.playback_url
        engine = self.session.engine.container_id
        try:
            status, body = await get_capped(self.hls.upstream.http, url, PLAYLIST_TIMEOUT_S, MAX_PLAYLIST_BYTES)
            if status != 200:
                raise WireError(502, f"engine {engine} answered the playlist with HTTP {status}")
            text = playlist_text(body)
            uris = segment_uris(text, url)
        except (httpx.TimeoutException, TimeoutError):
            raise self._failed(
                504, f"engine {engine} did not answer the playlist within {PLAYLIST_TIMEOUT_S:g}s"
            ) from None
        except (httpx.HTTPError, ResponseTooLarge) as exc:
            raise self._failed(502, f"engine {engine} playlist failed: {describe(exc)}") from None
        except WireError as exc:
            raise self._failed(exc.status, str(exc)) from None
        self.target_s = min(target_duration(text) or DEFAULT_TARGET_S, MAX_TARGET_S)
        names = {uri: f"{SEGMENT_PREFIX}{self.token}/{self._number(uri)}.ts" for uri in uris}
        return rewrite_playlist(text, url, names)

    def _failed(self, status: int, message: str) -> StartError:
        log.warning("HLS stream %s: %s; ending it", self.session.stream_id if self.session else "?", message)
        self.leave("engine_failed")
        return StartError(status, message)

    def _number(self, url: str) -> int:
        number = self.numbers.get(url)
        if number is None:
            number = self.numbers[url] = self.next_number
            self.urls[number] = url
            self.next_number += 1
            while len(self.urls) > REMEMBERED:
                oldest = next(iter(self.urls))
                del self.numbers[self.urls.pop(oldest)]
        return number

    # ------------------------------------------------------------ segments

    def segment_url(self, number: int) -> str | None:
        return self.urls.get(number)

    def status(self) -> dict[str, Any]:
        session = self.session
        return {
            "content": self.content.key,
            "key_type": self.content.key_type,
            "stream_id": session.stream_id if session else None,
            "engine": session.engine.container_id if session else None,
            "segments": self.segments,
            "idle_s": round(time.monotonic() - self.last_request, 1),
        }


class Hls:
    """Every HLS session of this proxy replica, by content and by token."""

    def __init__(self, config: Config, upstream: Upstream) -> None:
        self.config = config
        self.upstream = upstream
        self.sessions: dict[Content, HlsSession] = {}
        self.tokens: dict[str, HlsSession] = {}

    def session_for(self, content: Content) -> HlsSession:
        found = self.sessions.get(content)
        if found is None or not found.accepting:
            found = HlsSession(self, content)
            self.sessions[content] = found
            self.tokens[found.token] = found
        found.touch()
        return found

    def by_token(self, token: str) -> HlsSession | None:
        found = self.tokens.get(token)
        if found is not None:
            found.touch()
        return found

    def forget(self, session: HlsSession) -> None:
        self.tokens.pop(session.token, None)
        if self.sessions.get(session.content) is session:
            del self.sessions[session.content]

    async def close(self, timeout_s: float) -> None:
        """End every HLS session (`proxy_stopped`), bounded by `timeout_s`."""
        await leave_all(list(self.sessions.values()), "proxy_stopped", timeout_s)


def parse_segment_path(path: str) -> tuple[str, int]:
    """(token, number) from `/ace/hls/<token>/<n>.ts`; WireError 404 for anything else."""
    token, _, name = path.removeprefix(SEGMENT_PREFIX).partition("/")
    number = name.removesuffix(".ts")
    if not token or not name.endswith(".ts") or not number.isdigit() or len(number) > 12:
        raise WireError(404, f"no such HLS segment: {path[:100]}")
    return token, int(number)


async def relay_segment(
    http: httpx.AsyncClient,
    url: str,
    send_head: Callable[[int | None], None],
    write: Callable[[bytes], Awaitable[None]],
    abort: Callable[[], None],
) -> None:
    """Stream one segment from the engine: `send_head(length or None)` once the engine answered, then
    `await write(chunk)` per chunk; bounded by SEGMENT_TIMEOUT_S and MAX_SEGMENT_BYTES (past either,
    after the head, `abort()`). Before the head, failures raise StartError (404 segment gone, 502, 504)."""
    sent = 0
    started = False
    try:
        async with asyncio.timeout(SEGMENT_TIMEOUT_S):
            async with http.stream("GET", url, timeout=PLAYLIST_TIMEOUT_S, headers=IDENTITY) as response:
                if response.status_code == 404:
                    raise StartError(404, "the segment is no longer on the engine")
                if response.status_code != 200:
                    raise StartError(502, f"the engine answered the segment with HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                length = int(declared) if declared.isdigit() and int(declared) <= MAX_SEGMENT_BYTES else None
                send_head(length)
                started = True
                async for chunk in response.aiter_raw():
                    sent += len(chunk)
                    if sent > MAX_SEGMENT_BYTES:
                        raise ResponseTooLarge(MAX_SEGMENT_BYTES)
                    await write(chunk)
                    metrics.HLS_BYTES.inc(len(chunk))
    except (httpx.TimeoutException, TimeoutError):
        if started:
            abort()
            return
        raise StartError(504, f"the engine did not answer the segment within {SEGMENT_TIMEOUT_S:g}s") from None
    except (httpx.HTTPError, ResponseTooLarge) as exc:
        if started:
            abort()
            return
        raise StartError(502, f"segment from the engine failed: {describe(exc)}") from None
