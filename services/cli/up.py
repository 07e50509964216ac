"""`aceorch up`: the whole system on one machine, as child processes of one supervisor.

Order of life:
  check ports and the data dir → nats-server (JetStream store under DATA/nats)
  → every service package that exists, each `python -m services.<name>`
  → print the dashboard URL once the gateway answers /healthz
  → on Ctrl-C / SIGTERM stop services in reverse order (gateway first,
    state-keeper last), then the engines of this runtime and pool (unless
    --keep-engines), then any orphan left below us (`up` is a child
    subreaper), then nats-server. Each stop is bounded: SIGTERM, wait, SIGKILL.
A service that exits on its own is restarted with backoff (restarts wait in
their own tasks, so the watch never stalls); the backoff starts afresh once a
service ran STABLE_AFTER_S, and RESTART_LIMIT quick crashes in a row stop
everything, as do a configuration error (exit 2) and a dead nats-server
(noticed the moment it exits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable
from pathlib import Path

import httpx

from services.cli.auth import create_layout
from services.cli.children import Child, adopted_children, alive, become_subreaper, kill_pid, reap, terminate_pid
from services.cli.engines import report_removed, stop_engines
from services.cli.logs import Output
from services.cli.plan import (
    EXIT_CONFIG_ERROR,
    SERVICES,
    UpError,
    UpOptions,
    auth_dir,
    find_nats_server,
    find_services,
    lock_data_dir,
    metrics_ports,
    nats_argv,
    options_from,
    plan_restart,
    prepare,
    service_argv,
    service_env,
)
from shared import auth
from shared.bus import BusError
from shared.config import Config, load_config

NATS_START_TIMEOUT_S = 20.0
GATEWAY_HEAD_START_S = 5.0  # the longest the other services wait for the gateway to answer
REAP_EVERY_S = 5.0  # between collecting exited orphans


class Supervisor:
    def __init__(self, options: UpOptions, config: Config, output: Output) -> None:
        self.options = options
        self.config = config
        self.out = output
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.nats: Child | None = None
        self.services: list[Child] = []
        self.exit_code = 0
        self.exited = asyncio.Event()  # some child exited: the watch looks at once
        self.restarting: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> int:
        self._install_signal_handlers()
        become_subreaper()
        try:
            await self._start_nats()
            if not self.stop.is_set():
                await self._start_services()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._announce_dashboard())
                    group.create_task(self._watch())
        finally:
            await self._shutdown()
        return self.exit_code

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if not self.stop.is_set():
            self.out.say(f"{signal.Signals(sig).name}: stopping (press Ctrl-C again to force)")
            self.stop.set()
        elif not self.force.is_set():
            self.out.say("forcing: killing what is still running")
            self.force.set()

    # -- start

    async def _start_nats(self) -> None:
        options = self.options
        (options.data_dir / "nats").mkdir(parents=True, exist_ok=True)
        _, created = auth.init(auth_dir(options))  # keys made once, kept for ever after; grants rewritten
        if created:
            self.out.say(f"made role keys in {auth_dir(options)} ({len(created)}); give external proxies proxy.nk")
        self.nats = Child(
            "nats", nats_argv(find_nats_server(), options), dict(os.environ), self.out.emit, self.exited.set
        )
        await self.nats.start()
        self.out.say(f"nats-server starting on 127.0.0.1:{options.nats_port} (store {options.data_dir / 'nats'})")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NATS_START_TIMEOUT_S
        while not await _accepts(options.nats_port):
            if not self.nats.running:
                raise UpError(f"nats-server exited with code {self.nats.returncode}; see its lines above")
            if loop.time() > deadline:
                raise UpError(f"nats-server did not accept connections within {NATS_START_TIMEOUT_S:g}s")
            if self.stop.is_set():
                return
            await asyncio.sleep(0.1)
        await self._create_layout()

    async def _create_layout(self) -> None:
        """As admin, before any service: with role keys they bind to the layout and never create it."""
        admin = load_config({**service_env(os.environ, self.options), "NATS_NKEY": str(self._key(auth.ADMIN))})
        try:
            await create_layout(admin)
        except BusError as exc:
            raise UpError(f"could not create the stream and buckets as admin: {exc}") from None

    def _key(self, role: str) -> Path:
        return auth.key_path(auth_dir(self.options), role)

    async def _start_services(self) -> None:
        present, missing = find_services()
        for name in missing:
            self.out.say(f"warning: services.{name.replace('-', '_')} is not installed here, running without it")
        # The gateway goes first and gets the CPU to itself until it answers: on a 2-core machine
        # six interpreters importing at once would otherwise delay the API by seconds.
        for package, name in sorted(present, key=lambda service: service[1] != "gateway"):
            if self.stop.is_set():
                break
            child = Child(
                name, service_argv(package), service_env(os.environ, self.options, name), self.out.emit, self.exited.set
            )
            await child.start()
            self.services.append(child)  # known at once, so a Ctrl-C meanwhile stops it too
            if name == "gateway":
                await self._gateway_answers(within_s=GATEWAY_HEAD_START_S)
        order = [name for _, name in present]
        self.services.sort(key=lambda child: order.index(child.name))  # stopped in reverse of this order
        self.out.say(f"started {', '.join(c.name for c in self.services)} (runtime {self.options.runtime})")
        if ports := metrics_ports(os.environ):
            self.out.say("metrics: " + ", ".join(f"{name} :{port}" for name, port in ports.items()))

    async def _announce_dashboard(self) -> None:
        if not any(child.name == "gateway" for child in self.services):
            self.out.say("no gateway: inspect engines with `aceorch engines`")
            return
        if await self._gateway_answers():
            if any(child.name == "proxy" for child in self.services):
                self.out.say(f"watch: http://127.0.0.1:{self.config.proxy_port}/ace/getstream?id=<content id>")
            self.out.say(f"dashboard: http://127.0.0.1:{self.options.gateway_port}/  (Ctrl-C stops everything)")

    async def _gateway_answers(self, within_s: float | None = None) -> bool:
        """Poll /healthz until it answers 200 (True), `within_s` passes or we are stopping (False)."""
        url = f"http://127.0.0.1:{self.options.gateway_port}/healthz"
        deadline = None if within_s is None else asyncio.get_running_loop().time() + within_s
        async with httpx.AsyncClient(timeout=2) as http:
            while not self.stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return True
                if deadline is not None and asyncio.get_running_loop().time() > deadline:
                    return False
                await self._pause(0.1)
        return False

    # -- watch

    async def _watch(self) -> None:
        """Until stopped: restart services that exit, give up on config errors, crash loops or a dead NATS."""
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + REAP_EVERY_S
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.exited.wait(), timeout=REAP_EVERY_S)
            self.exited.clear()
            if self.stop.is_set():
                return
            if loop.time() >= next_reap:
                self._reap_adopted()
                next_reap = loop.time() + REAP_EVERY_S
            if self.nats is not None and not self.nats.running:
                self._fail(1, f"nats-server exited with code {self.nats.returncode}; stopping everything")
                return
            for child in self.services:
                if child.exited_at is not None and not child.stopping and child.name not in self.restarting:
                    self._on_exit(child)

    def _on_exit(self, child: Child) -> None:
        """Decide at once (never wait here: the watch must see the next exit, or NATS dying, meanwhile)."""
        assert child.proc is not None and child.exited_at is not None
        code = child.proc.returncode
        if code == EXIT_CONFIG_ERROR:
            self._fail(EXIT_CONFIG_ERROR, f"{child.name} rejected its configuration (exit 2); stopping everything")
            return
        uptime = child.exited_at - child.started_at
        plan = plan_restart(child.restarts, uptime)
        child.restarts = plan.restarts
        if plan.delay_s is None:
            self._fail(
                1,
                f"{child.name} keeps exiting (code {code} after {uptime:.1f}s, "
                f"{plan.restarts} quick restarts in a row); stopping everything",
            )
            return
        self.out.say(f"{child.name} exited with code {code} after {uptime:.1f}s; restarting in {plan.delay_s:g}s")
        self.restarting[child.name] = asyncio.get_running_loop().create_task(self._restart(child, plan.delay_s))

    async def _restart(self, child: Child, delay_s: float) -> None:
        try:
            await self._pause(delay_s)
            if self.stop.is_set():
                return
            assert child.exited_at is not None
            down_s = asyncio.get_running_loop().time() - child.exited_at
            try:
                await child.start()
            except OSError as exc:
                self._fail(1, f"could not restart {child.name}: {exc}; stopping everything")
                return
            self.out.say(f"{child.name} restarted (pid {child.pid}); it was unavailable for {down_s:.1f}s")
        finally:
            self.restarting.pop(child.name, None)

    def _fail(self, code: int, message: str) -> None:
        self.out.say(message)
        self.exit_code = code
        self.stop.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    # -- stop

    async def _shutdown(self) -> None:
        """Services in reverse start order with the engines just before the state-keeper, then NATS.

        The engines go while the state-keeper still runs, so it deletes their records: the next
        `up` never shows or hands out an engine of this run. A failing step never skips the rest.
        """
        self.stop.set()
        for task in list(self.restarting.values()):  # they see `stop` and return; a start under way finishes
            with contextlib.suppress(Exception):
                await task
        timeout = self.options.stop_timeout_s
        engines_stopped = False
        for child in reversed(self.services):
            if child.name == "state-keeper":
                await self._step("stopping engines", self._stop_engines())
                engines_stopped = True
            if child.proc is not None:
                await self._step(f"stopping {child.name}", self._stop_child(child, timeout))
        if not engines_stopped:
            await self._step("stopping engines", self._stop_engines())
        if not self.options.keep_engines:
            await self._step("stopping stray processes", self._stop_strays(timeout))
        if self.nats is not None and self.nats.proc is not None:
            await self._step("stopping nats-server", self._stop_child(self.nats, timeout))

    async def _stop_child(self, child: Child, timeout: float) -> None:
        code = await child.stop(timeout, self.force)
        self.out.say(f"{child.name} stopped (exit {code})")

    async def _step(self, what: str, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as exc:  # keep going: what follows must still be stopped
            self.out.say(f"{what} failed: {exc!r}")
            self.exit_code = self.exit_code or 1

    async def _stop_engines(self) -> None:
        if self.options.keep_engines:
            self.out.say(f"--keep-engines: {self.options.runtime} engines keep running; the next `up` adopts them")
            return
        stopped = []
        for engine, error in await stop_engines(self.config):
            self.out.say(
                f"{engine.container_name} stopped"
                if error is None
                else f"{engine.container_name}: could not stop it: {error}"
            )
            if error is None:
                stopped.append(engine.container_id)
        if self.nats is not None and not self.nats.running:
            return  # nothing can record it now; the next run's provisioner reports them gone
        still = await report_removed(self.config.nats_url, stopped, str(self._key(auth.OPERATOR)))
        if still:
            self.out.say(
                f"{len(still)} engine record(s) not removed yet: the state-keeper applies engine.removed when it next starts"
            )

    def _known_pids(self) -> set[int]:
        return {child.pid for child in [*self.services, self.nats] if child is not None and child.pid}

    async def _stop_strays(self, timeout: float) -> None:
        """Processes left below us that no runtime knows about (orphans we adopted as subreaper)."""
        strays = {pid: cmd for pid, cmd in adopted_children(self._known_pids()).items() if alive(pid)}
        for pid, command in strays.items():
            if command:  # an empty command line: the process is already exiting (e.g. an engine just stopped)
                self.out.say(f"stopping stray process {pid}: {command[:160]}")
            terminate_pid(pid, command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while strays and loop.time() < deadline and not self.force.is_set():
            strays = {pid: cmd for pid, cmd in strays.items() if not reap(pid)}
            await asyncio.sleep(0.1)
        for pid in strays:
            kill_pid(pid)
        await asyncio.sleep(0.1)
        self._reap_adopted()

    def _reap_adopted(self) -> None:
        """Collect exited orphans we adopted, so they don't linger as zombies."""
        for pid in adopted_children(self._known_pids()):
            reap(pid)


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=1)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def up(args: argparse.Namespace) -> int:
    output = Output(["nats", *(name for _, name in SERVICES)])
    try:
        options = options_from(args, os.environ)
        config = prepare(options)
        lock = lock_data_dir(options.data_dir)
    except UpError as exc:
        output.say(f"error: {exc}")
        output.flush()
        return exc.code
    try:
        return asyncio.run(_run(options, config, output))
    finally:
        lock.close()
        output.flush()  # bounded: a reader that never reads again does not keep us from exiting


async def _run(options: UpOptions, config: Config, output: Output) -> int:
    supervisor = Supervisor(options, config, output)
    try:
        code = await supervisor.run()
    except UpError as exc:
        output.say(f"error: {exc}")
        return 1
    output.say("all stopped")
    return code
