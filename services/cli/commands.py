"""Client commands: `engines`, `streams`, `select`, `stream start`, `stream end`.

Each is a coroutine taking the parsed arguments and returning an exit code;
output goes to stdout, one readable block (or JSON with --json).
"""

from __future__ import annotations

import argparse
import json

import httpx
import msgspec

from services.cli.client import connected, request
from services.cli.proxy import EndResult, end_stream, keeper_answers, new_stream_id, select, start_stream
from services.cli.table import engines_table, on_host, streams_table
from shared import names
from shared.schemas import EngineList, ListRequest, StreamList, StreamListRequest, decoder, utcnow

decode_engines = decoder(EngineList)
decode_streams = decoder(StreamList)


def _dump(obj: object) -> None:
    print(json.dumps(msgspec.to_builtins(obj), indent=2))


async def engines(args: argparse.Namespace) -> int:
    async with connected(args.nats_url, nkey=args.nkey) as nc:
        listing = await request(nc, names.ENGINE_LIST, ListRequest(), decode=decode_engines)
    if args.json:
        _dump(on_host(listing.engines, args.host))
    else:
        print(engines_table(listing.engines, utcnow(), args.host))
    return 0


async def streams(args: argparse.Namespace) -> int:
    query = StreamListRequest(status=None if args.all else "started")
    async with connected(args.nats_url, nkey=args.nkey) as nc:
        listing = await request(nc, names.STREAM_LIST, query, decode=decode_streams)
    if args.json:
        _dump(listing.streams)
    else:
        print(streams_table(listing.streams, utcnow()))
    return 0


async def select_engine(args: argparse.Namespace) -> int:
    async with connected(args.nats_url, nkey=args.nkey) as nc:
        choice = await select(nc, args.content, args.key_type if args.content else None)
    if args.json:
        _dump(choice)
        return 0
    engine = choice.engine
    print(
        f"engine {engine.container_name} at {engine.host}:{engine.port} "
        f"(reservation {choice.reservation_id}, expires {choice.reservation_expires_at:%H:%M:%S}"
        f"{', shared with a running stream' if choice.shared else ''})"
    )
    return 0


async def stream_start(args: argparse.Namespace) -> int:
    content = args.content or f"aceorch-cli-{new_stream_id()[4:12]}"
    async with connected(args.nats_url, nkey=args.nkey) as nc, httpx.AsyncClient() as http:
        playing = await start_stream(nc, http, content, args.stream_id, args.key_type)
    if args.json:
        _dump(playing)
        return 0
    engine = playing.engine
    print(
        f"stream {playing.stream_id} started on {engine.container_name} ({engine.host}:{engine.port})"
        f"{' [shared]' if playing.shared else ''}"
    )
    print(f"  content   {playing.content_key}")
    print(f"  playback  {playing.playback_url}")
    print(f"  end with  aceorch stream end {playing.stream_id}")
    return 0


async def stream_end(args: argparse.Namespace) -> int:
    async with connected(args.nats_url, nkey=args.nkey) as nc, httpx.AsyncClient() as http:
        result = await end_stream(nc, http, args.stream_id, reason=args.reason)
        keeper_up = await keeper_answers(nc)
    for line in end_report(args.stream_id, result, keeper_up):
        print(line)
    return 0


def end_report(stream_id: str, result: EndResult, keeper_up: bool) -> list[str]:
    """What `stream end` says once JetStream acknowledged the end (pure, for the tests)."""
    record = result.record
    if record is None:
        lines = [f"stream {stream_id} is not in the stream records (yet); stream.ended stored anyway"]
    elif record.status == "ended":
        lines = [f"stream {stream_id} had already ended ({record.reason or 'no reason'})"]
    else:
        lines = [f"stream {stream_id} ended on {record.container_id}"]
    if result.shared is None and record is not None and record.status == "started":
        lines.append(
            "  engine session left running: could not tell whether another viewer shares it "
            "(the engine's idle timeout ends it)"
        )
    if not keeper_up:
        lines.append(
            "  no state-keeper answers now: the end is stored in JetStream and "
            "the state-keeper will apply it when it is back"
        )
    return lines
