"""The `local` runtime: each engine is a child process on this host.

The command comes from `ENGINE_COMMAND`, a template with `{host}`, `{port}`,
`{cache_dir}` and `{name}` (default: the engine simulator,
`<python> -m deploy.acesim --host {host} --port {port} --cache-dir {cache_dir}`).
`{host}` is `ENGINE_HOST`, the address the engine listens on and is recorded
at: on many hosts, the one the other hosts reach this host by. Under
`ENGINE_STATE_DIR` every engine has
- `<name>.json`: pid, port, host, name, cache_dir, command, started_at — how a
  restarted provisioner finds it again;
- `<name>/cache/`: its own cache directory;
- `<name>.log`: its output.

Engines run in their own session (and so their own process group), so a
Ctrl-C on the provisioner does not reach them and a restarted provisioner
adopts them; stopping one signals its whole group, so a wrapper script's
children stop with it. A process is identified by its pid AND its start time
(/proc/<pid>/stat field 22, recorded at launch): a reused pid — after a
reboot, or a state file naming some other process — is never mistaken for (or
killed as) an engine, and a wrapper whose command line does not name the port
is still recognised. State files written before start times were recorded
fall back to: the command line names the port and the process is older than
the file. Creation takes a file lock on the state dir, so two provisioners
sharing it never pick the same name or port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config import Config, default_host_id
from shared.policy.hosts import key_token
from shared.policy.naming import free_ports, lowest_free_name, render_command
from shared.runtime.base import (
    LABEL_SCOPE,
    EngineSpec,
    ExecResult,
    ManagedRuntime,
    RuntimeEvent,
    RuntimeFailure,
    managed_labels,
    port_is_free,
)

log = logging.getLogger(__name__)

DEFAULT_COMMAND = (
    f"{shlex.quote(sys.executable)} -m deploy.acesim --host {{host}} --port {{port}} --cache-dir {{cache_dir}}"
)
STOP_TIMEOUT_S = 5.0
POLL_S = 0.5
EXEC_WAIT_S = 2.0


@dataclass(frozen=True)
class EngineFile:
    """One engine's state file."""

    pid: int
    port: int
    name: str
    cache_dir: str
    command: str
    started_at: float
    start_time: int | None = None  # /proc/<pid>/stat field 22 at launch: with the pid, the process's identity
    # Files written before engines had an address of their own: they listen on loopback.
    host: str = "127.0.0.1"
    # The id's host part: HOST_ID (as a key token) when it was set at launch. Empty in files written
    # before, and with the default HOST_ID, so the engines a deployment already runs keep their ids.
    id_host: str = ""

    @property
    def container_id(self) -> str:
        return engine_id(self.port, self.id_host)


def engine_id(port: int, id_host: str = "") -> str:
    """`local-<port>`, or `local-<host>-<port>` where engines of several hosts share one fleet: ports
    repeat across hosts, ids must not."""
    return f"local-{id_host}-{port}" if id_host else f"local-{port}"


class LocalRuntime:
    kind: ManagedRuntime = "local"

    def __init__(self, config: Config) -> None:
        self._config = config
        self._dir = Path(config.engine_state_dir).resolve()
        self._scope = f"local:{socket.gethostname()}:{self._dir}"
        self._children: set[int] = set()  # pids we spawned: we must reap them when they exit
        self._removing: set[int] = set()  # pids being removed through us: not deaths
        self._id_host = "" if config.host_id == default_host_id() else key_token(config.host_id)

    # ------------------------------------------------------------ interface

    async def create(self) -> EngineSpec:
        return self._spec(await asyncio.to_thread(self._create))

    async def list_managed(self) -> list[EngineSpec]:
        files = await asyncio.to_thread(self._live_files)
        return [self._spec(f) for f in files]

    async def get(self, container_id: str) -> EngineSpec | None:
        return next((s for s in await self.list_managed() if s.container_id == container_id), None)

    async def exec_shell(self, engine: EngineSpec, script: str, timeout_s: float = 60) -> ExecResult:
        """`sh -c script` on this host, in the engine's cache dir, with ENGINE_CACHE_DIR set to it."""
        env = {**os.environ, "ENGINE_CACHE_DIR": engine.cache_dir}
        cwd = engine.cache_dir if os.path.isdir(engine.cache_dir) else None  # noqa: ASYNC240  # one local stat
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a timeout kills the whole script, not just its shell
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.communicate()
            raise RuntimeFailure(
                f"local: command for {engine.container_name} did not finish within {timeout_s}s"
            ) from None
        exit_code = proc.returncode if proc.returncode is not None else -1
        return ExecResult(exit_code=exit_code, output=output.decode("utf-8", errors="replace"))

    async def remove(self, engine: EngineSpec) -> None:
        """SIGTERM the engine's process group, SIGKILL after STOP_TIMEOUT_S; drop its files."""
        await asyncio.to_thread(self._remove, engine.container_id)

    async def remove_exited(self) -> list[str]:
        """Drop the files of engines that died while nobody watched; their ids."""
        return await asyncio.to_thread(self._remove_exited)

    def owns(self, labels: Mapping[str, str]) -> bool:
        return labels.get(LABEL_SCOPE) == self._scope

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        """Engines whose process is gone while their state file remains, by polling every POLL_S."""
        reported: set[tuple[str, int]] = set()
        while True:
            for entry in await asyncio.to_thread(self._dead_files, reported):
                reported.add((entry.name, entry.pid))
                yield RuntimeEvent(kind="died", container_id=entry.container_id)
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        for pid in list(self._children):
            self._reap(pid)  # what already exited; running engines keep running

    # ------------------------------------------------------------ creation

    def _create(self) -> EngineFile:
        self._dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            live = self._live_files()
            name = lowest_free_name(f.name for f in live)
            host = self._config.engine_host
            port = self._choose_port({f.port for f in live}, host)
            engine_dir = self._dir / name
            cache_dir = engine_dir / "cache"
            shutil.rmtree(engine_dir, ignore_errors=True)  # a new engine starts with an empty cache
            cache_dir.mkdir(parents=True)
            try:
                command = render_command(
                    self._config.engine_command or DEFAULT_COMMAND,
                    host=host,
                    port=port,
                    cache_dir=str(cache_dir),
                    name=name,
                )
            except ValueError as exc:
                raise RuntimeFailure(f"local: {exc}") from None
            pid = self._spawn(command, name, port, cache_dir)
            _wait_for_exec(pid)
            entry = EngineFile(
                pid, port, name, str(cache_dir), command, time.time(), _start_time(pid), host, self._id_host
            )
            self._write(entry)
            return entry

    def _choose_port(self, taken: set[int], host: str) -> int:
        for port in free_ports(self._config.engine_port_range, taken):
            if port_is_free(port, host):
                return port
        first, last = self._config.engine_port_range
        raise RuntimeFailure(f"local: no free port in ENGINE_PORT_RANGE {first}-{last} ({len(taken)} held by engines)")

    def _spawn(self, command: str, name: str, port: int, cache_dir: Path) -> int:
        """Start the engine in its own session, output to its log; returns its pid.

        posix_spawn rather than Popen: it returns once the engine's program runs (so
        /proc/<pid>/cmdline already names the port), and no Popen object is left to
        complain that an engine outlives the provisioner — which is the point.
        """
        argv = shlex.split(command)
        env = {
            **os.environ,
            "ACEORCH_ENGINE_NAME": name,
            "ACEORCH_ENGINE_PORT": str(port),
            "ENGINE_CACHE_DIR": str(cache_dir),
        }
        log_path = str(self._dir / f"{name}.log")
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        try:
            # setsid: a Ctrl-C on the provisioner must not reach the engines.
            pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True)
        except (OSError, IndexError) as exc:
            raise RuntimeFailure(f"local: cannot start {name} with ENGINE_COMMAND {command!r}: {exc}") from None
        self._children.add(pid)
        return pid

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True)  # a fresh ENGINE_STATE_DIR: adopt() locks before any create
        with open(self._dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------ state files

    def _files(self) -> list[EngineFile]:
        if not self._dir.is_dir():
            return []
        entries = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                entries.append(EngineFile(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("local: ignoring unreadable state file %s: %s", path, exc)
        return entries

    def _live_files(self) -> list[EngineFile]:
        return [f for f in self._files() if self._alive(f)]

    def _dead_files(self, known: set[tuple[str, int]]) -> list[EngineFile]:
        """State files whose process is gone, except those in `known` or being removed through us."""
        return [
            f
            for f in self._files()
            if (f.name, f.pid) not in known and f.pid not in self._removing and not self._alive(f)
        ]

    def _write(self, entry: EngineFile) -> None:
        path = self._dir / f"{entry.name}.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(entry.__dict__))
        temporary.replace(path)

    def _find(self, container_id: str) -> EngineFile | None:
        return next((f for f in self._files() if f.container_id == container_id), None)

    # ------------------------------------------------------------ processes

    def _alive(self, entry: EngineFile) -> bool:
        if entry.pid in self._children:  # an unreaped child's pid cannot have been reused
            return not self._reap(entry.pid)
        return _is_engine_process(entry)

    def _reap(self, pid: int) -> bool:
        """True if our child `pid` has exited (collected now, so no zombie is left)."""
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # already collected
        if done:
            self._children.discard(pid)
        return bool(done)

    def _remove(self, container_id: str) -> None:
        with self._locked():
            entry = self._find(container_id)
            if entry is None:
                return
            self._removing.add(entry.pid)
            # The state file goes first, so no poller reports this stop as a death; the engine's
            # dir moves aside, so a new engine taking the name meanwhile keeps its own cache.
            (self._dir / f"{entry.name}.json").unlink(missing_ok=True)
            trash = self._dir / f".removed-{entry.name}-{entry.pid}"
            if (self._dir / entry.name).exists():
                (self._dir / entry.name).replace(trash)
        self._stop(entry)
        shutil.rmtree(trash, ignore_errors=True)

    def _stop(self, entry: EngineFile) -> None:
        if not self._alive(entry):
            return  # not (or no longer) our engine: its pid may be someone else's now
        group = entry.pid if _group_of(entry.pid) == entry.pid else None
        self._signal(entry.pid, group, signal.SIGTERM)
        # Until every member of its group is gone: a wrapper may exit before the engine it started.
        running: Callable[[], bool] = (
            (lambda: self._alive(entry) or _group_members(group)) if group else (lambda: self._alive(entry))
        )
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not running():
                return
            time.sleep(0.05)
        log.warning("local: %s (pid %d) ignored SIGTERM for %.0fs; killing it", entry.name, entry.pid, STOP_TIMEOUT_S)
        self._signal(entry.pid, group, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _signal(pid: int, group: int | None, sig: int) -> None:
        """The whole process group when the engine leads one (it does: setsid), else the pid."""
        with contextlib.suppress(ProcessLookupError):
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)

    def _remove_exited(self) -> list[str]:
        gone = []
        with self._locked():
            for entry in self._files():
                if entry.pid in self._removing or self._alive(entry):
                    continue
                (self._dir / f"{entry.name}.json").unlink(missing_ok=True)
                shutil.rmtree(self._dir / entry.name, ignore_errors=True)
                gone.append(entry.container_id)
        return gone

    def _spec(self, entry: EngineFile) -> EngineSpec:
        return EngineSpec(
            container_id=entry.container_id,
            container_name=entry.name,
            host=entry.host,
            port=entry.port,
            runtime=self.kind,
            labels=managed_labels(entry.name, entry.port, self._scope, self._config.engine_pool),
            cache_dir=entry.cache_dir,
            created_at=entry.started_at,
        )


def _cmdline(pid: int) -> bytes | None:
    """/proc/<pid>/cmdline; None when there is no such process, empty for a zombie."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (state) on; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()  # the command name may contain spaces and ')'


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _group_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def _group_members(pgid: int) -> bool:
    """Whether any live (not zombie) process is in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def _is_engine_process(entry: EngineFile) -> bool:
    """The pid runs and is the very process we launched (pids get reused)."""
    fields = _stat_fields(entry.pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    if entry.start_time is not None:
        return int(fields[19]) == entry.start_time
    # A state file from before start times were recorded: its command line names the port, and it
    # started before the file was written (a process started later cannot be the one it names).
    cmdline = _cmdline(entry.pid)
    if not cmdline:
        return False
    names_port = re.search(rb"(?<![0-9])%d(?![0-9])" % entry.port, cmdline) is not None
    return names_port and _started_wall_time(int(fields[19])) <= entry.started_at + 1.0


def _started_wall_time(ticks: int) -> float:
    with open("/proc/stat", "rb") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _wait_for_exec(pid: int, timeout_s: float = EXEC_WAIT_S) -> None:
    """posix_spawn returns while the kernel may still be setting up the new program, when its
    cmdline reads empty; state files are written only after, so no reader mistakes it for dead."""
    deadline = time.monotonic() + timeout_s
    while _cmdline(pid) == b"" and not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.001)


def _exited(pid: int) -> bool:
    """Gone, or a zombie (state Z in /proc/<pid>/stat, after the command name in parentheses)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == b"Z"
