"""`aceorch`: run the whole system (`up`) and talk to it like a proxy does.

aceorch up [--data-dir DIR] [--runtime local|docker] [--keep-engines]
aceorch engines [--json] [--watch [--interval S]]
aceorch events [--gateway URL] [--limit N] [--no-follow]
aceorch select [CONTENT]
aceorch stream start [CONTENT] [--stream-id ID]
aceorch stream end STREAM_ID
aceorch demo [--viewers N] [--duration S]
aceorch contract [--output FILE] [--check]
aceorch auth init [DIR] | aceorch auth show [DIR] [--role ROLE]
aceorch setup [--nkey ADMIN_KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from services.cli import auth as auth_cli
from services.cli import contract, follow
from services.cli.client import CliError, default_nats_url

KEY_TYPES = ("content_id", "infohash", "url", "magnet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aceorch", description="Orchestrator for fleets of AceStream engines, over NATS."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_up(commands)
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--nats-url",
        default=default_nats_url(),
        help="NATS server(s), comma-separated (default: $NATS_URL or %(default)s)",
    )
    client.add_argument(
        "--nkey",
        help="the role key (seed file) to connect with (default: $NATS_NKEY, else data/auth/operator.nk "
        "when it exists — admin.nk for setup — else none)",
    )
    client.add_argument("--json", action="store_true", help="print JSON instead of text")

    engines = commands.add_parser("engines", parents=[client], help="list engines as a table")
    engines.add_argument("--watch", action="store_true", help="redraw the table in place until Ctrl-C")
    engines.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (default 2)")
    engines.add_argument("--host", help="only the engines on this host (its HOST_ID)")
    engines.set_defaults(run="engines")
    follow.add_parser(commands)

    streams = commands.add_parser("streams", parents=[client], help="list started streams with peers and speed")
    streams.add_argument("--all", action="store_true", help="ended streams too (kept for STREAM_TTL_S)")
    streams.set_defaults(run="streams")

    select = commands.add_parser("select", parents=[client], help="ask for an engine (reserves it briefly)")
    select.add_argument("content", nargs="?", help="content key to select for (shares its engine when it plays)")
    select.add_argument("--key-type", choices=KEY_TYPES, default="content_id")
    select.set_defaults(run="select")

    stream = commands.add_parser("stream", help="start or end a stream, as a proxy would")
    stream_commands = stream.add_subparsers(dest="stream_command", required=True, metavar="start|end")
    start = stream_commands.add_parser(
        "start", parents=[client], help="select an engine, open a session, publish stream.started"
    )
    start.add_argument("content", nargs="?", help="content id (default: a random one)")
    start.add_argument("--stream-id", help="id for the stream (default: cli-<random>)")
    start.add_argument("--key-type", choices=KEY_TYPES, default="content_id")
    start.set_defaults(run="stream_start")
    end = stream_commands.add_parser("end", parents=[client], help="stop the engine session, publish stream.ended")
    end.add_argument("stream_id")
    end.add_argument("--reason", default="stopped by aceorch")
    end.set_defaults(run="stream_end")

    _add_demo(commands, client)
    contract.add_parser(commands)
    auth_cli.add_parsers(commands, client)
    return parser


def _add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up",
        help="run nats-server and every service on this machine",
        description="Start nats-server and every service as child processes; Ctrl-C stops them all.",
    )
    up.add_argument(
        "--data-dir",
        default=os.environ.get("DATA_DIR") or "data",
        help="JetStream store, role keys and engine state (default: $DATA_DIR or ./data)",
    )
    up.add_argument("--runtime", choices=("local", "docker"), help="engine runtime (default: $ENGINE_RUNTIME or local)")
    up.add_argument("--nats-port", type=int, help="NATS client port (default: $NATS_PORT or 4222)")
    up.add_argument("--gateway-port", type=int, help="HTTP port of the gateway (default: $GATEWAY_PORT or 8000)")
    up.add_argument("--keep-engines", action="store_true", help="leave local engines running on exit")
    up.add_argument("--stop-timeout", type=float, default=10.0, help="seconds each process gets to stop (default 10)")
    up.set_defaults(run="up")


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser], client: argparse.ArgumentParser) -> None:
    from services.cli.demo import parse_span

    demo = commands.add_parser("demo", parents=[client], help="simulated viewers zapping between channels")
    demo.add_argument("--viewers", type=int, default=6, help="concurrent viewers (default 6)")
    demo.add_argument("--channels", type=int, default=8, help="distinct channels (default 8)")
    demo.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    demo.add_argument(
        "--watch", type=parse_span, default=(10.0, 40.0), help="seconds per viewing, MIN-MAX (default 10-40)"
    )
    demo.add_argument(
        "--pause", type=parse_span, default=(2.0, 8.0), help="seconds between viewings, MIN-MAX (default 2-8)"
    )
    demo.set_defaults(run="demo")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.run == "engines" and args.interval <= 0:
        parser.error("--interval must be positive")
    if args.run == "events" and not 1 <= args.limit <= 1000:
        parser.error("--limit must be between 1 and 1000")
    if args.run == "demo":
        if not 1 <= args.viewers <= 1000:
            parser.error("--viewers must be between 1 and 1000")
        if not 1 <= args.channels <= 1000:
            parser.error("--channels must be between 1 and 1000")
        if args.duration <= 0:
            parser.error("--duration must be positive")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.run == "up":
        from services.cli.up import up

        return up(args)
    if args.run == "contract":
        return contract.contract(args)
    if args.run in ("auth_init", "auth_show"):
        return auth_cli.init(args) if args.run == "auth_init" else auth_cli.show(args)
    if getattr(args, "nkey", "") is None:
        args.nkey = auth_cli.default_nkey(getattr(args, "nkey_role", "operator"))
    if args.run == "setup":
        return auth_cli.setup(args)
    from services.cli import commands, demo

    handlers = {
        "engines": follow.watch_engines if args.run == "engines" and args.watch else commands.engines,
        "events": follow.events,
        "streams": commands.streams,
        "select": commands.select_engine,
        "stream_start": commands.stream_start,
        "stream_end": commands.stream_end,
        "demo": demo.demo,
    }
    try:
        return asyncio.run(handlers[args.run](args))
    except CliError as exc:
        print(f"aceorch {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
