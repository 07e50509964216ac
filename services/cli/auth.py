"""`aceorch auth init|show` and `aceorch setup`: role keys, the server's grants, the layout.

init writes one nkey seed per role (DIR/<role>.nk, mode 0600, never overwriting
one that exists) and DIR/auth.conf, the `authorization` block nats-server loads.
show prints each role's public key and grants. setup connects with the admin
key and creates the stream, the buckets and the state-keeper's durable
consumer, which no other role may create.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from shared import auth
from shared.config import Config

AUTH_DIR = "auth"  # under the data dir


def default_data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR") or "data")


def default_nkey(role: str = auth.OPERATOR) -> str:
    """$NATS_NKEY, else DATA_DIR/auth/<role>.nk when it exists (what `aceorch up` made), else none."""
    if configured := os.environ.get("NATS_NKEY"):
        return configured
    candidate = auth.key_path(default_data_dir() / AUTH_DIR, role)
    return str(candidate) if candidate.exists() else ""


def add_parsers(commands: argparse._SubParsersAction, client: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    group = commands.add_parser("auth", help="role keys for NATS and the server's permissions (DESIGN §11)")
    sub = group.add_subparsers(dest="auth_command", required=True, metavar="init|show")
    init = sub.add_parser("init", help="one key per role and the server's authorization config (keeps existing keys)")
    init.add_argument("dir", nargs="?", help="where (default: $DATA_DIR/auth, i.e. data/auth)")
    init.add_argument(
        "--tls", action="store_true", help="also a private CA, the server's and each role's certificate (openssl)"
    )
    init.add_argument(
        "--tls-host",
        action="append",
        help="a name or IP the server's certificate is valid for (default: 127.0.0.1, localhost)",
    )
    init.set_defaults(run="auth_init")
    show = sub.add_parser("show", help="each role's public key and grants, as a table")
    show.add_argument("dir", nargs="?", help="key directory (default: $DATA_DIR/auth, i.e. data/auth)")
    show.add_argument("--role", choices=auth.ROLES, help="only this role, with every subject")
    show.set_defaults(run="auth_show")
    setup = commands.add_parser(
        "setup",
        parents=[client],
        help="create the stream, buckets and durable consumer (admin key; services with role keys only bind)",
    )
    setup.set_defaults(run="setup", nkey_role=auth.ADMIN)


def _directory(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else default_data_dir() / AUTH_DIR


def init(args: argparse.Namespace) -> int:
    directory = _directory(args)
    try:
        keys, created = auth.init(directory)
    except (OSError, auth.AuthError) as exc:
        print(f"aceorch auth init: {exc}", file=sys.stderr)
        return 1
    kept = [role for role in keys if role not in created]
    print(f"{directory}: created {', '.join(created) or 'no key'}; kept {', '.join(kept) or 'no key'}")
    print(f"server config: {directory / auth.SERVER_CONFIG} (nats-server -c it, or include it)")
    if args.tls:
        from services.cli.certs import SERVER_HOSTS, TLS_CONFIG, make_certificates

        try:
            made = make_certificates(directory, args.tls_host or SERVER_HOSTS)
        except (OSError, auth.AuthError) as exc:
            print(f"aceorch auth init: {exc}", file=sys.stderr)
            return 1
        print(f"certificates in {directory / 'tls'}: made {', '.join(made) or 'none (all kept)'}")
        print(f"server TLS config: {directory / TLS_CONFIG}; clients: NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY")
    return 0


def show(args: argparse.Namespace) -> int:
    directory = _directory(args)
    keys: dict[str, str] = {}
    try:
        for role in auth.ROLES:
            path = auth.key_path(directory, role)
            if path.exists():
                keys[role] = auth.public_key(auth.read_seed(path))
    except auth.AuthError as exc:
        print(f"aceorch auth show: {exc}", file=sys.stderr)
        return 1
    if not keys:
        print(f"aceorch auth show: no keys in {directory}; run `aceorch auth init {directory}`", file=sys.stderr)
        return 1
    print(auth.grants_table(keys, only=args.role))
    return 0


async def create_layout(config: Config) -> None:
    """The stream, the buckets and the state-keeper's durable, as admin (or on an open server);
    BusError when NATS refuses or is not there."""
    from services.state_keeper.consumer import consumer_config
    from shared import names
    from shared.bus import BusError, connect

    if config.nats_nkey and auth.role_of(Path(config.nats_nkey)) not in ("", auth.ADMIN):
        raise BusError(f"{config.nats_nkey} is not the admin key; only admin creates the stream and buckets")
    bus = await connect(config, "aceorch-setup")  # with admin's key (or none) it creates the layout
    try:
        await bus.js.add_consumer(names.EVENTS_STREAM, consumer_config())
    finally:
        await bus.close()


def setup(args: argparse.Namespace) -> int:
    from shared import names
    from shared.bus import BusError
    from shared.config import ConfigError, load_config

    try:
        config = load_config({**os.environ, "NATS_URL": args.nats_url, "NATS_NKEY": args.nkey})
    except ConfigError as exc:
        print(f"aceorch setup: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(create_layout(config))
    except BusError as exc:
        print(f"aceorch setup: {exc}", file=sys.stderr)
        return 1
    print(f"{names.EVENTS_STREAM}, buckets {', '.join(auth.BUCKETS)} and durable {names.EVENTS_CONSUMER} are in place")
    return 0
