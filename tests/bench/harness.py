"""What every benchmark shares: a private NATS stack, process gauges, a load generator, results.

A `Stack` is one nats-server (venv binary, free loopback port, temporary
store) plus the services a benchmark starts, all stopped by pid on exit.
`Gauge` samples resident memory and CPU time of those processes from /proc.
`request_load` drives N concurrent requesters for a fixed time and returns
latencies; `Results` collects figures with their targets and prints the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nats
import nats.errors

from shared.bus import Bus, connect
from shared.config import load_config
from shared.service import run_loop
from tests.support import (
    NatsServer,
    Process,
    Processes,
    create_open_layout,
    free_port,
    free_port_range,
    wait_for_service,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "build" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


# ------------------------------------------------------------------ results


class WrongResult(AssertionError):
    """A benchmark's system did not do the work it was timed on: the run fails, whatever the speed."""


@dataclass
class Figure:
    bench: str
    name: str
    value: float | None
    unit: str
    shown: str  # the value as printed
    target: str = ""
    ok: bool | None = None  # None: no target for this figure
    note: str = ""


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    footprint: dict[str, dict[str, float]] = field(default_factory=dict)  # service → {"idle": MB, "load": MB}
    footprint_where: dict[str, str] = field(default_factory=dict)  # service → which load its peak came from

    def add(
        self,
        bench: str,
        name: str,
        value: float | None,
        unit: str = "",
        *,
        digits: int = 0,
        target: str = "",
        ok: bool | None = None,
        note: str = "",
    ) -> Figure:
        shown = "n/a" if value is None else f"{value:,.{digits}f}"
        figure = Figure(bench, name, value, unit, shown, target, ok, note)
        self.figures.append(figure)
        verdict = "" if ok is None else ("  PASS" if ok else "  MISS")
        aim = f"  (target {target})" if target else ""
        print(f"  {name}: {shown} {unit}{aim}{verdict}{'  - ' + note if note else ''}", flush=True)
        return figure

    def memory(self, service: str, idle_mb: float | None, load_mb: float | None, where: str) -> None:
        """Keep the largest idle and under-load resident size seen for each service."""
        entry = self.footprint.setdefault(service, {})
        if idle_mb is not None:
            entry["idle"] = max(entry.get("idle", 0.0), idle_mb)
        if load_mb is not None and load_mb >= entry.get("load", 0.0):
            entry["load"] = load_mb
            self.footprint_where[service] = where

    def table(self, title: str = "Summary") -> str:
        rows = [("benchmark", "figure", "value", "target", "")]
        for f in self.figures:
            verdict = "" if f.ok is None else ("PASS" if f.ok else "MISS")
            rows.append((f.bench, f.name, f"{f.shown} {f.unit}".strip(), f.target, verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [title, "=" * len(title)]
        for index, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        misses = sum(1 for f in self.figures if f.ok is False)
        passes = sum(1 for f in self.figures if f.ok is True)
        lines.append(f"\n{passes} targets met, {misses} missed")
        return "\n".join(lines)

    def save(self, name: str) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{name}.json"
        data = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine(),
            "figures": [asdict(f) for f in self.figures],
            "footprint": self.footprint,
            "footprint_where": self.footprint_where,
        }
        path.write_text(json.dumps(data, indent=2))
        return path


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    import importlib.metadata as md
    import subprocess

    from tests.support import nats_server_binary

    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram_gib": f"{mem_kb / 1024 / 1024:.1f}",
        "python": sys.version.split()[0],
        "nats_server": server,
        "nats_py": md.version("nats-py"),
        "msgspec": md.version("msgspec"),
        "bus": "role keys and grants" if AUTH else "open (BENCH_AUTH=0)",
    }


# ------------------------------------------------------------------ processes


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Gauge:
    """Samples VmRSS of labelled processes in a thread; reports the peak of each since `reset`."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s = period_s
        self.pids: dict[str, list[int]] = {}
        self.peak: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-gauge", daemon=True)
        self._thread.start()

    def track(self, label: str, pid: int) -> None:
        with self._lock:
            self.pids.setdefault(label, []).append(pid)

    def forget(self, label: str) -> None:
        with self._lock:
            self.pids.pop(label, None)
            self.peak.pop(label, None)

    def now(self, label: str) -> float | None:
        """The largest current RSS among the processes with this label."""
        values = [v for v in (rss_mb(pid) for pid in self.pids.get(label, [])) if v is not None]
        return max(values) if values else None

    def reset(self) -> None:
        with self._lock:
            self.peak.clear()

    def peaks(self) -> dict[str, float]:
        self._sample()
        with self._lock:
            return dict(self.peak)

    def cpu(self, label: str) -> float:
        """CPU seconds used so far by all processes with this label."""
        return sum(v for v in (cpu_s(pid) for pid in self.pids.get(label, [])) if v is not None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _sample(self) -> None:
        with self._lock:
            for label, pids in self.pids.items():
                for pid in pids:
                    value = rss_mb(pid)
                    if value is not None and value > self.peak.get(label, 0.0):
                        self.peak[label] = value

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class Window:
    """CPU used over a stretch of time: per label, by this process, and by everything else on the machine.

    The machine is shared (other jobs may run during a benchmark); `foreign`
    says how much of it was busy with work that is not ours.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge

    def __enter__(self) -> Window:
        self.started = time.monotonic()
        self.before = {label: self.gauge.cpu(label) for label in self.gauge.pids}
        self.own_before = own_cpu_s()
        self.busy_before = machine_busy_s()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.started
        self.used = {label: self.gauge.cpu(label) - self.before.get(label, 0.0) for label in self.gauge.pids}
        self.own = own_cpu_s() - self.own_before
        busy = machine_busy_s() - self.busy_before
        self.foreign = max(0.0, busy - self.own - sum(self.used.values()))

    def share(self, label: str) -> float:
        """Average share of one core used by `label` over the window."""
        return self.used.get(label, 0.0) / self.seconds if self.seconds else 0.0

    @property
    def foreign_share(self) -> float:
        return self.foreign / self.seconds if self.seconds else 0.0


free_port_block = free_port_range


# The services run as they do in production: each with its role's key, under grants the server enforces
# (the load generators connect keyless and may do anything). BENCH_AUTH=0: the open server, to compare.
AUTH = os.environ.get("BENCH_AUTH", "1") != "0"


class Stack:
    """One private nats-server plus the services a benchmark starts; everything stopped by pid."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"aceorch-bench-{name}-"))
        self.processes = Processes(self.workdir)
        self.nats = NatsServer(port=free_port(), store=self.workdir / "jetstream", processes=self.processes)
        if AUTH:
            self.processes.keys = self.nats.with_role_keys(self.workdir / "auth")
        self.gauge = Gauge()
        self._failed = False

    def __enter__(self) -> Stack:
        self.nats.start()
        self.gauge.track("nats-server", self.nats.process.pid)
        if AUTH:
            create_open_layout(self.url)  # as `aceorch setup` does: services with a role key only bind to it
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.gauge.close()
        self.processes.stop_all()
        if kind is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"  (logs kept in {self.workdir})", flush=True)

    @property
    def url(self) -> str:
        return self.nats.url

    def env(self, **overrides: object) -> dict[str, str]:
        env = {"NATS_URL": self.url, "LOG_LEVEL": "WARNING"}
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def service(self, module: str, label: str | None = None, **overrides: object) -> Process:
        proc = self.processes.service(module, self.env(**overrides))
        self.gauge.track(label or module.replace("_", "-"), proc.pid)
        return proc

    def start(self, label: str, argv: list[str], **overrides: object) -> Process:
        proc = self.processes.start(label, argv, self.env(**overrides))
        self.gauge.track(label, proc.pid)
        return proc

    def stop(self, proc: Process, label: str | None = None) -> None:
        proc.stop()
        if label is not None:
            with self.gauge._lock:
                pids = self.gauge.pids.get(label, [])
                if proc.pid in pids:
                    pids.remove(proc.pid)

    async def bus(self, name: str = "bench") -> Bus:
        return await connect(load_config({"NATS_URL": self.url}), name)

    async def client(self) -> nats.NATS:
        return await nats.connect(self.url, name="bench-load", max_reconnect_attempts=2)

    async def keepers(self, nc: nats.NATS, count: int, **overrides: object) -> list[Process]:
        started = [self.service("state_keeper", **overrides) for _ in range(count)]
        await wait_for_service(nc, "state-keeper", count, timeout=30)
        return started


# ------------------------------------------------------------------ load


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float]  # seconds, successful requests started inside the window
    errors: Counter
    reply_bytes: int

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return percentile(self.latencies, q) * 1000 if self.latencies else None

    @property
    def mean_reply(self) -> float:
        return self.reply_bytes / self.ok if self.ok else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def request_load(
    nc: nats.NATS,
    subject: str,
    payload: bytes | Callable[[int], bytes],
    concurrency: int,
    seconds: float,
    warmup_s: float = 0.5,
    timeout_s: float = 5.0,
    max_requests: int = 1_000_000,
) -> LoadResult:
    """`concurrency` requesters, each sending its next request when the last reply arrives.

    Only requests started after the warm-up count; the loop is bounded in time and count.
    """
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup_s
    end = begin + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    received = [0, 0]  # bytes, requests sent
    perf = time.perf_counter

    async def requester(index: int) -> None:
        while loop.time() < end and received[1] < max_requests:
            received[1] += 1
            data = payload(received[1]) if callable(payload) else payload
            counted = loop.time() >= begin
            started = perf()
            try:
                msg = await nc.request(subject, data, timeout=timeout_s)
            except nats.errors.TimeoutError:
                errors["timeout"] += 1
                continue
            except nats.errors.NoRespondersError:
                errors["no_responders"] += 1
                await asyncio.sleep(0.01)
                continue
            elapsed = perf() - started
            if not counted:
                continue
            code = msg.headers.get("Nats-Service-Error-Code") if msg.headers else None
            if code:
                errors[code] += 1
                continue
            latencies.append(elapsed)
            received[0] += len(msg.data)

    await asyncio.gather(*(requester(i) for i in range(concurrency)))
    return LoadResult(concurrency, seconds, latencies, errors, received[0])


async def bounded_gather(factories: Iterable[Callable[[], Awaitable[object]]], limit: int) -> list[object]:
    """Run coroutine factories with at most `limit` in flight; results in order."""
    slots = asyncio.Semaphore(limit)

    async def one(factory):
        async with slots:
            return await factory()

    return await asyncio.gather(*(one(f) for f in factories))


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str, period_s: float = 0.05
) -> float:
    """Poll until true; the time it took. Raises TimeoutError naming `what`."""
    started = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} not reached after {timeout_s:.0f}s")
        await asyncio.sleep(period_s)


def run_alone(name: str, body: Callable[[Results], Awaitable[None]]) -> int:
    """Entry point for `python -m tests.bench.<name>`."""
    results = Results()
    run_loop(body(results))
    print()
    print(results.table(f"{name} benchmark"))
    results.save(name)
    return 0
