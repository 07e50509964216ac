"""Talking to an engine's HTTP API (the real AceStream engine or acesim).

A probe's outcome is data, not an exception: a hung engine is a normal event
for us, reported with an error kind (`timeout`, `refused`, `connect_error`,
`disconnected`, `http_<code>`, `bad_json`, `api_error`, `http_error`) and
never logged as a traceback.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import msgspec

STATUS_PATH = "/server/api"
STATUS_PARAMS = {"api_version": "3", "method": "get_status"}
STATUS_QUERY = "api_version=3&method=get_status"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    error: str | None = None
    version: str | None = None


class _Version(msgspec.Struct):
    version: str | None = None


class _Result(msgspec.Struct):
    version: _Version | None = None


class _StatusReply(msgspec.Struct):
    result: _Result | None = None
    error: object = None


_decode_status = msgspec.json.Decoder(_StatusReply).decode


def status_url(host: str, port: int) -> str:
    """The full get_status URL (query included: cheaper than letting httpx merge params)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}{STATUS_PATH}?{STATUS_QUERY}"


def new_client(max_connections: int = 100) -> httpx.AsyncClient:
    """The one pooled client a prober shares across all its engines.

    No keep-alive: an engine is probed every few seconds at best, and holding
    one idle connection per engine makes httpcore scan a 1,000-entry pool on
    every request (measured: 2.3 ms instead of 0.9 ms CPU per probe). Proxy
    variables are ignored: engines are reached directly, never through a proxy.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=0)
    return httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)


def interpret_status(status_code: int, body: bytes) -> tuple[str | None, str | None]:
    """(error kind or None, version) for a get_status reply."""
    if status_code != 200:
        return f"http_{status_code}", None
    try:
        reply = _decode_status(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "bad_json", None
    if reply.error is not None:
        return "api_error", None
    version = reply.result.version.version if reply.result and reply.result.version else None
    return None, version


async def probe(client: httpx.AsyncClient, host: str, port: int, timeout_s: float) -> ProbeResult:
    """One get_status round trip, bounded by `timeout_s` from connect to last byte."""
    started = time.perf_counter()
    try:
        # httpx's timeout is per phase; the outer bound also covers an engine that drips bytes.
        async with asyncio.timeout(timeout_s):
            response = await client.get(status_url(host, port), timeout=timeout_s)
        error, version = interpret_status(response.status_code, response.content)
    except (httpx.TimeoutException, TimeoutError):
        error, version = "timeout", None
    except httpx.ConnectError as exc:
        error, version = ("refused" if _refused(exc) else "connect_error"), None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        error, version = "disconnected", None  # the engine closed the connection without an answer
    except httpx.HTTPError:
        error, version = "http_error", None
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return ProbeResult(ok=error is None, latency_ms=latency_ms, error=error, version=version)


def _refused(exc: BaseException) -> bool:
    """Nothing listens there: anyio wraps the ConnectionRefusedError in "All connection attempts failed"."""
    seen: BaseException | None = exc
    for _ in range(10):  # the chain is short; the bound guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
