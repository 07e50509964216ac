"""`aceorch engines --watch` and `aceorch events`: the dashboard's live views in a terminal.

`engines --watch` asks engine.list every --interval seconds and redraws the
table in place (cursor home, clear to the end: no scrolling wall of tables).
`events` prints the gateway's recent events (GET /api/events, oldest first, as
a log reads) and then follows its live feed (/api/live's `event` frames),
reconnecting with backoff when the gateway goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

# NATS, httpx and the schemas are imported by the commands themselves: `aceorch` imports this module
# for its parser, and every other command (`up` first) would pay ~0.25 s for them.
REDRAW = "\x1b[H\x1b[J"  # cursor to the top left, clear to the end of the screen
MAX_BACKOFF_S = 10.0


def default_gateway_url() -> str:
    port = os.environ.get("GATEWAY_PORT") or "8000"
    return os.environ.get("GATEWAY_URL") or f"http://127.0.0.1:{port}"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = commands.add_parser(
        "events", help="what happened (health flips, cleans, removals, streams), then follow it live"
    )
    events.add_argument(
        "--gateway", default=default_gateway_url(), help="the gateway (default: $GATEWAY_URL or %(default)s)"
    )
    events.add_argument("--api-key", default=os.environ.get("API_KEY", ""), help="API_KEY, when the gateway has one")
    events.add_argument("--limit", type=int, default=20, help="recent events shown first (default 20, at most 1000)")
    events.add_argument("--no-follow", action="store_true", help="print the recent events and exit")
    events.set_defaults(run="events")


def frame(table: str, now: datetime, interval_s: float) -> str:
    """One redraw of `engines --watch`: the table under a line saying when and how often."""
    return f"{REDRAW}engines at {now:%H:%M:%S} (every {interval_s:g}s; Ctrl-C to stop)\n\n{table}\n"


def event_line(event: dict[str, Any]) -> str:
    """`14:03:07  acestream-3 unhealthy: timeout after 5.0 s, 2 failures in a row`, local time."""
    try:
        at = datetime.fromisoformat(str(event.get("at"))).astimezone()
        when = f"{at:%H:%M:%S}"
    except ValueError:
        when = "--:--:--"
    marker = {"error": "!", "warning": "~"}.get(str(event.get("level")), " ")
    return f"{when} {marker} {event.get('text', '')}"


async def watch_engines(args: argparse.Namespace) -> int:
    from services.cli.client import connected, request
    from services.cli.table import engines_table
    from shared import names
    from shared.schemas import EngineList, ListRequest, decoder, utcnow

    decode_engines = decoder(EngineList)
    async with connected(args.nats_url) as nc:
        while True:
            listing = await request(nc, names.ENGINE_LIST, ListRequest(), decode=decode_engines)
            sys.stdout.write(frame(engines_table(listing.engines, utcnow(), args.host), utcnow(), args.interval))
            sys.stdout.flush()
            await asyncio.sleep(args.interval)


async def events(args: argparse.Namespace) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.gateway, headers=headers, timeout=10) as http:
        seen: set[str] = set()
        for event in reversed(await _recent(http, args.limit)):
            _show(event, seen)
        if args.no_follow:
            return 0
        backoff = 1.0
        while True:
            try:
                async for event in _live_events(http):
                    backoff = 1.0
                    _show(event, seen)
            except httpx.HTTPError as exc:
                print(f"(live feed lost: {type(exc).__name__}; reconnecting in {backoff:g}s)", file=sys.stderr)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def _show(event: dict[str, Any], seen: set[str]) -> None:
    key = str(event.get("id"))
    if key in seen:
        return
    seen.add(key)
    print(event_line(event), flush=True)


async def _recent(http: httpx.AsyncClient, limit: int) -> list[dict[str, Any]]:
    import httpx

    from services.cli.client import CliError

    try:
        reply = await http.get("/api/events", params={"limit": limit})
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the gateway at {http.base_url} ({type(exc).__name__}): is `aceorch up` running? "
            "Pass --gateway or set GATEWAY_URL."
        ) from None
    if reply.status_code != 200:
        raise CliError(f"GET /api/events answered {reply.status_code}: {reply.text[:200]}")
    body = reply.json()
    return body if isinstance(body, list) else []


async def _live_events(http: httpx.AsyncClient) -> AsyncIterator[dict[str, Any]]:
    """The `event` frames of /api/live (one JSON line of data each), until the stream ends."""
    import httpx

    async with http.stream("GET", "/api/live", timeout=httpx.Timeout(10, read=None)) as response:
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"/api/live: {response.status_code}", request=response.request, response=response
            )
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "event":
                change = json.loads(line[5:])
                if isinstance(change.get("event"), dict):
                    yield change["event"]
            elif not line:
                kind = ""
