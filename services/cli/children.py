"""Child processes of `aceorch up`: spawn, pump their output, stop them in bounded time.

Children run in their own session, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops them one by one in order. Each child also
gets SIGTERM from the kernel if the supervisor dies without cleaning up
(PR_SET_PDEATHSIG), so a crashed `aceorch up` does not leave orphans behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
LINE_LIMIT = 1 << 20  # a child's log line longer than this is split, not fatal
KILL_WAIT_S = 5.0
PUMP_DRAIN_S = 2.0  # how long an exit waits for the child's last lines


_LIBC = ctypes.CDLL(None, use_errno=True)
# Resolved here, before any fork: the child (between fork and exec, while other threads of `up` may hold
# the dynamic loader's lock) then runs no dlsym and no import, only the system call.
_PRCTL = _LIBC.prctl
_PDEATHSIG_TERM = (PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _PRCTL(*_PDEATHSIG_TERM)


@dataclass
class Child:
    """One supervised process and the task that copies its output."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    emit: Callable[[str, str], None]  # (child name, line)
    on_exit: Callable[[], None] = lambda: None  # called (in the loop) the moment the process exits
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    waiter: asyncio.Task[None] | None = None
    started_at: float = 0.0
    exited_at: float | None = None  # loop time of the exit itself, not of when someone looked
    restarts: int = 0
    stopping: bool = field(default=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """The exit code; None while it runs or before it started."""
        return self.proc.returncode if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=dict(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            limit=LINE_LIMIT,
        )
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        self.exited_at = None
        self.stopping = False
        self.pump = loop.create_task(self._copy_output(self.proc))
        self.waiter = loop.create_task(self._note_exit(self.proc))

    async def _note_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.exited_at = asyncio.get_running_loop().time()
        if self.pump is not None:  # its last lines (a traceback) before anyone reports the exit
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pump), timeout=PUMP_DRAIN_S)
        self.on_exit()

    async def _copy_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # longer than LINE_LIMIT: take what is buffered
                line = await proc.stdout.read(LINE_LIMIT)
            if not line:
                return
            self.emit(self.name, line.decode(errors="replace").rstrip("\r\n"))

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self.pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pump), timeout=PUMP_DRAIN_S)
        return code

    async def stop(self, timeout_s: float, force: asyncio.Event | None = None) -> int | None:
        """SIGTERM, wait up to `timeout_s` (less once `force` is set), then SIGKILL."""
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            if not await _wait_or_force(self.proc, timeout_s, force):
                self.emit("aceorch", f"{self.name} did not stop within {timeout_s:g}s, killing it")
                self._signal(signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), timeout=KILL_WAIT_S)
        return await self.wait()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            assert self.proc is not None
            self.proc.send_signal(sig)


async def _wait_or_force(proc: asyncio.subprocess.Process, timeout_s: float, force: asyncio.Event | None) -> bool:
    """True when the process exited within the time (cut short when `force` is set)."""
    waiter = asyncio.ensure_future(proc.wait())
    forced = asyncio.ensure_future(force.wait()) if force is not None else None
    pending = {waiter} | ({forced} if forced else set())
    done, _ = await asyncio.wait(pending, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for task in pending - done:
        task.cancel()
    return waiter in done


def become_subreaper() -> bool:
    """Orphans below us (engines whose provisioner exited) become our children, not init's.

    So `up` can find and stop every process it caused, even one a runtime lost track of.
    """
    return bool(_PRCTL(PR_SET_CHILD_SUBREAPER, 1) == 0)


def adopted_children(known: set[int]) -> dict[int, str]:
    """Our child processes that we did not start ourselves: {pid: command line}."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                found[int(entry)] = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return found


def reap(pid: int) -> bool:
    """Collect an adopted child's exit status; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not alive(pid)
    return done == pid


def alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def terminate_pid(pid: int, name: str) -> None:
    signal_tree(pid, signal.SIGTERM)
    log.debug("SIGTERM to %s (pid %d)", name, pid)


def kill_pid(pid: int) -> None:
    signal_tree(pid, signal.SIGKILL)


def signal_tree(pid: int, sig: int) -> None:
    """The process group `pid` leads (an engine started by a wrapper script: the wrapper and what
    it started), or just `pid` when it leads none — never a group that merely contains it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
