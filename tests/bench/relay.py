"""The stream proxy (DESIGN §10): relay cost per byte against a minimal asyncio relay, time to first
byte, the failover gap, and memory per viewer.

Real processes: nats-server, a state-keeper, a prober, one acesim process playing every engine, the
proxy (`python -m services.proxy`) and the baseline (`tests/bench/minimal_relay.py`). Viewers are raw
sockets in this process, counting bytes and noting when they arrive.

- Relay: the same channels and viewers through each relay for the same time. Viewers cannot read
  faster than live, so both deliver the same bytes; what differs is the CPU each spends on them.
  bytes per CPU-second = the rate one saturated core would relay; the ratio is proxy ÷ baseline.
- Time to first byte: 20 viewers open 20 new channels at once (selection, engine session,
  `stream.started`, first bytes); acesim has no prebuffering unless asked, so it is all ours.
- Failover gap: 3 viewers on a channel whose engine crashes, then one whose engine stalls,
  at default settings: per viewer, last byte before → first byte after, on the same connection.
- Memory: proxy RSS with one viewer on each of 10 channels, then with 500 viewers on them.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field

import httpx

from shared import names
from shared.schemas import EngineRegistered, encode
from tests.bench.harness import Results, Stack, Window, WrongResult, free_port_block, percentile, wait_for
from tests.support import free_port

BENCH = "relay"
ENGINES = 12
BITRATE = "4M"  # its 5 s join backlog (2.5 MB) fits the default 4 MiB PROXY_BUFFER_BYTES
RELAY_CHANNELS, RELAY_VIEWERS, RELAY_WINDOW_S, RELAY_ROUNDS = 4, 30, 8.0, 2
TTFB_STARTS, TTFB_ROUNDS, TARGET_TTFB_P99_MS = 20, 3, 50.0
FAILOVER_VIEWERS = 3
MEMORY_CHANNELS, MEMORY_VIEWERS = 10, 500
TARGET_RATIO = 0.7


@dataclass
class Viewer:
    """A player on a raw socket: what arrived, and when."""

    url: str
    opened: float = 0.0
    first_byte: float | None = None
    received: int = 0
    arrivals: list[float] = field(default_factory=list)
    keep_arrivals: bool = False
    status: int | None = None
    task: asyncio.Task | None = None

    def start(self) -> Viewer:
        self.task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        parts = httpx.URL(self.url)
        self.opened = time.perf_counter()
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        target = parts.raw_path.decode()
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.host}:{parts.port}\r\n\r\n".encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            while chunk := await reader.read(65536):
                now = time.perf_counter()
                if self.first_byte is None:
                    self.first_byte = now
                self.received += len(chunk)
                if self.keep_arrivals:
                    self.arrivals.append(now)
        finally:
            writer.close()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def gap_around(self, instant: float) -> float | None:
        """Seconds from the last arrival before `instant` to the first after it."""
        before = [t for t in self.arrivals if t <= instant]
        after = [t for t in self.arrivals if t > instant]
        return after[0] - before[-1] if before and after else None


async def until(check, timeout_s: float, what: str, period_s: float = 0.1) -> float:
    """`wait_for` for a plain (not awaitable) condition."""

    async def predicate() -> bool:
        return bool(check())

    return await wait_for(predicate, timeout_s, what, period_s)


async def close_all(viewers: list[Viewer]) -> None:
    await asyncio.gather(*(v.close() for v in viewers))


def content(tag: str, n: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{n}-{time.time()}").hex + "00000000"


async def start_fleet(stack: Stack, bus, count: int) -> list[int]:
    first = free_port_block(count)
    ports = list(range(first, first + count))
    stack.start(
        "acesim",
        [
            sys.executable,
            "-m",
            "deploy.acesim",
            "--ports",
            f"{first}-{ports[-1]}",
            "--bitrate",
            BITRATE,
            "--cache-dir",
            str(stack.workdir / "acesim-cache"),
        ],
    )
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:

        async def up() -> bool:
            try:
                return (
                    await client.get(f"http://127.0.0.1:{ports[-1]}/webui/api/service?method=get_version")
                ).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, 30, "acesim", period_s=0.2)
    for port in ports:
        event = EngineRegistered(container_id=f"sim-{port}", host="127.0.0.1", port=port, runtime="external")
        await bus.js.publish(names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": f"reg-{port}"})
    return ports


async def healthy_engines(bus, count: int) -> bool:
    msg = await bus.nc.request(names.ENGINE_LIST, b'{"health_status": "healthy"}', timeout=5)
    return len(msg.data) > 2 and msg.data.count(b'"container_id"') >= count


async def proxy_sessions(client: httpx.AsyncClient, url: str) -> list[dict]:
    return (await client.get(f"{url}/ace/status")).json()["sessions"]


async def relay_cost(stack: Stack, label: str, url: str, results: Results, note: str) -> float:
    """Bytes per CPU-second `label` spends relaying RELAY_CHANNELS × RELAY_VIEWERS."""
    channels = [content("relay", n) for n in range(RELAY_CHANNELS)]
    viewers = [Viewer(f"{url}?id={c}").start() for c in channels for _ in range(RELAY_VIEWERS)]
    try:
        await until(lambda: all(v.first_byte for v in viewers), 30, f"{label}: every viewer's first bytes", 0.2)
        await asyncio.sleep(6.0)  # past the 5 s backlog every join gets at once: the live rate from here
        before = sum(v.received for v in viewers)
        with Window(stack.gauge) as window:
            await asyncio.sleep(RELAY_WINDOW_S)
            delivered = sum(v.received for v in viewers) - before
        gone = [v for v in viewers if v.task is None or v.task.done()]
        if gone:  # bytes per CPU-second of a relay that shed viewers would flatter it
            raise WrongResult(f"{label}: {len(gone)} of {len(viewers)} viewers lost their stream during the window")
    finally:
        await close_all(viewers)
    cpu = window.used.get(label, 0.0)
    per_cpu_s = delivered / cpu if cpu else 0.0
    results.add(
        BENCH,
        f"{label}: bytes per CPU-second",
        per_cpu_s / 1e6,
        "MB/s per core",
        digits=1,
        note=f"{RELAY_CHANNELS} channels × {RELAY_VIEWERS} viewers at {BITRATE}bit/s: "
        f"{delivered / window.seconds / 1e6:.1f} MB/s delivered with {window.share(label):.0%} of a core; "
        f"other work on the machine {window.foreign_share:.0%} of a core. {note}",
    )
    return per_cpu_s


async def time_to_first_byte(proxy_url: str, results: Results) -> None:
    samples: list[float] = []
    statuses: dict[int | None, int] = {}
    for round_no in range(TTFB_ROUNDS):
        viewers = [Viewer(f"{proxy_url}/ace/getstream?id={content(f'ttfb{round_no}', n)}") for n in range(TTFB_STARTS)]
        for viewer in viewers:
            viewer.start()
        try:
            await until(
                lambda: all(v.first_byte or (v.task and v.task.done()) for v in viewers),
                30,
                "first bytes of every start",
                0.05,
            )
        finally:
            await close_all(viewers)
        for viewer in viewers:
            statuses[viewer.status] = statuses.get(viewer.status, 0) + 1
            if viewer.first_byte is not None:
                samples.append(viewer.first_byte - viewer.opened)
        await asyncio.sleep(2.0)  # PROXY_LINGER_S 1 s: the sessions end and their slots free up
    p99 = percentile(samples, 99) * 1000
    results.add(
        BENCH,
        f"time to first byte p99, {TTFB_STARTS} concurrent starts",
        p99,
        "ms",
        digits=1,
        target=f"< {TARGET_TTFB_P99_MS:g} ms",
        ok=p99 < TARGET_TTFB_P99_MS and len(samples) == TTFB_STARTS * TTFB_ROUNDS,
        note=f"{len(samples)} starts in {TTFB_ROUNDS} rounds, p50 {percentile(samples, 50) * 1000:.1f} ms, "
        f"max {max(samples) * 1000:.1f} ms, statuses {statuses}; each start is engine.select, "
        "the engine's getstream, stream.started (JetStream ack) and the playback's first bytes",
    )


async def failover_gap(
    proxy_url: str, client: httpx.AsyncClient, fault: str, results: Results, ports: list[int]
) -> None:
    channel = content(f"failover-{fault}", 0)
    viewers = [
        Viewer(f"{proxy_url}/ace/getstream?id={channel}", keep_arrivals=True).start() for _ in range(FAILOVER_VIEWERS)
    ]
    try:
        await until(lambda: all(v.first_byte for v in viewers), 30, "failover viewers' first bytes")
        await asyncio.sleep(6.0)  # live
        [session] = [s for s in await proxy_sessions(client, proxy_url) if s["content"] == channel]
        engine_port = int(session["engine"].rsplit("-", 1)[1])
        control_port = next(p for p in ports if p != engine_port)  # a crashed engine's port answers nothing
        faulted_at = time.perf_counter()
        await client.get(f"http://127.0.0.1:{control_port}/__sim/fault", params={"mode": fault, "port": engine_port})

        async def moved() -> bool:
            sessions = [s for s in await proxy_sessions(client, proxy_url) if s["content"] == channel]
            return (
                bool(sessions)
                and sessions[0]["engine"] not in (None, session["engine"])
                and all(v.arrivals and v.arrivals[-1] > faulted_at + 0.5 for v in viewers)
            )

        await wait_for(moved, 60, f"failover after {fault}", period_s=0.2)
        gaps = [v.gap_around(faulted_at + 0.001) for v in viewers]
        if fault == "stall":  # the engine keeps its port: clear the fault for what follows
            await client.get(
                f"http://127.0.0.1:{control_port}/__sim/fault", params={"mode": "none", "port": engine_port}
            )
    finally:
        await close_all(viewers)
    worst = max(g for g in gaps if g is not None)
    results.add(
        BENCH,
        f"failover gap after {fault}, default settings",
        worst,
        "s",
        digits=2,
        note=f"{FAILOVER_VIEWERS} viewers kept their connections; per viewer "
        f"{', '.join(f'{g:.2f}' for g in gaps if g is not None)} s from the last byte before to the first "
        f"after (STALL_TIMEOUT_S {10 if fault == 'stall' else 'not involved'}); includes the new selection "
        "and the new engine's first bytes",
    )


async def memory_per_viewer(stack: Stack, proxy_url: str, results: Results) -> None:
    channels = [content("memory", n) for n in range(MEMORY_CHANNELS)]
    first = [Viewer(f"{proxy_url}/ace/getstream?id={c}").start() for c in channels]
    rest: list[Viewer] = []
    try:
        await until(lambda: all(v.first_byte for v in first), 30, "one viewer per channel")
        await asyncio.sleep(6.0)  # every channel's buffer filled to its live window
        before = stack.gauge.now("proxy")
        per_channel = MEMORY_VIEWERS // MEMORY_CHANNELS - 1
        rest = [Viewer(f"{proxy_url}/ace/getstream?id={c}").start() for c in channels for _ in range(per_channel)]
        await until(lambda: all(v.first_byte for v in rest), 60, f"{MEMORY_VIEWERS} viewers", 0.2)
        await asyncio.sleep(5.0)
        after = stack.gauge.now("proxy")
        alive = sum(1 for v in first + rest if v.task and not v.task.done())
    finally:
        await close_all(first + rest)
    per_viewer_kib = (after - before) * 1024 / len(rest) if before and after else None
    results.add(
        BENCH,
        f"proxy memory per viewer, {MEMORY_VIEWERS} viewers",
        per_viewer_kib,
        "KiB",
        digits=0,
        note=f"RSS {before:.1f} MB with {MEMORY_CHANNELS} viewers on {MEMORY_CHANNELS} channels, "
        f"{after:.1f} MB with {len(first) + len(rest)} ({alive} still watching at the end) at {BITRATE}bit/s",
    )


async def bench(results: Results) -> None:
    print("\n== relay: the stream proxy against a minimal asyncio relay; first bytes; failover; memory", flush=True)
    with Stack(BENCH) as stack:
        bus = await stack.bus("bench-relay")
        try:
            await stack.keepers(bus.nc, 1)
            stack.service("prober")
            ports = await start_fleet(stack, bus, ENGINES)
            await wait_for(lambda: healthy_engines(bus, ENGINES), 60, f"{ENGINES} healthy engines", period_s=0.3)
            proxy_port, baseline_port = free_port(), free_port()
            stack.service("proxy", PROXY_PORT=proxy_port, PROXY_LINGER_S=1)
            stack.start(
                "baseline",
                [sys.executable, "-m", "tests.bench.minimal_relay", str(baseline_port), "127.0.0.1", str(ports[0])],
            )
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

                async def answers() -> bool:
                    try:
                        return (await client.get(f"{proxy_url}/healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await wait_for(answers, 30, "the proxy", period_s=0.2)
                idle = stack.gauge.now("proxy")
                stack.gauge.reset()
                ratios = []
                for round_no in range(RELAY_ROUNDS):  # alternating, so a busy stretch of the machine hits both
                    baseline = await relay_cost(
                        stack,
                        "baseline",
                        f"http://127.0.0.1:{baseline_port}/",
                        results,
                        f"Round {round_no + 1}: the minimal relay, one engine session per channel, raw fan-out.",
                    )
                    proxy = await relay_cost(
                        stack,
                        "proxy",
                        f"{proxy_url}/ace/getstream",
                        results,
                        f"Round {round_no + 1}: the proxy, the same through selection, its buffer and its checks.",
                    )
                    ratios.append(proxy / baseline if baseline else 0.0)
                ratio = statistics.median(ratios)
                results.add(
                    BENCH,
                    "proxy ÷ minimal relay, bytes per CPU-second",
                    ratio,
                    "x",
                    digits=2,
                    target=f">= {TARGET_RATIO:g}x",
                    ok=ratio >= TARGET_RATIO,
                    note=f"median of {RELAY_ROUNDS} alternating rounds ({', '.join(f'{r:.2f}' for r in ratios)}); "
                    "same run, same engines, same viewers; higher is cheaper per byte",
                )
                await time_to_first_byte(proxy_url, results)
                await failover_gap(proxy_url, client, "crash", results, ports)
                await failover_gap(proxy_url, client, "stall", results, ports)
                await memory_per_viewer(stack, proxy_url, results)
                results.memory(
                    "proxy",
                    idle,
                    stack.gauge.peaks().get("proxy"),
                    f"{MEMORY_VIEWERS} viewers on {MEMORY_CHANNELS} channels at {BITRATE}bit/s",
                )
        finally:
            await bus.close()


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
