"""The janitor's body: clean an engine's cache when it goes idle, and sweep for the ones it missed.

A clean is: `engine.claim purpose=clean` (keeps new streams off the engine)
→ one script inside the engine that measures the cache and empties it →
`engine.release` → `engine.cleaned`. A 409 claim means the engine is busy
again: skip it, the next idle or sweep comes back. Which engines are due is
decided in shared.policy.cleanup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable
from datetime import datetime

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter

from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.keeper_client import KeeperClient, KeeperError
from shared.kv import KvView
from shared.lease import claim_epoch, sleep_to_next_epoch
from shared.policy.cleanup import CleanResult, clean_script, engines_to_clean, format_bytes, parse_clean_output
from shared.policy.hosts import key_token
from shared.runtime import ExecStillRunning, Runtime, RuntimeFailure, make_runtime
from shared.schemas import EngineCleaned, EngineIdle, EngineRecord, decode_engine, decoder, utcnow

log = logging.getLogger("janitor")

CLEANS = Counter("aceorch_janitor_cleans_total", "Cache cleans, by result (ok, failed, busy, error)", ["result"])
BYTES_CLEANED = Counter("aceorch_janitor_cache_bytes_cleaned_total", "Cache bytes measured and removed")

CLEAN_CONCURRENCY = 4  # cleans running at once (docker exec calls hold a worker thread each)
MAX_QUEUED = 1000  # cleans waiting for a slot; beyond this the next sweep catches up
MAX_BACKOFF_INTERVALS = 16  # a failing engine is retried by the sweep at most this rarely
SHUTDOWN_WAIT_S = 10.0
decode_idle = decoder(EngineIdle)


class Janitor:
    def __init__(self, config: Config, bus: Bus, runtime: Runtime) -> None:
        self.config = config
        self.bus = bus
        self.runtime = runtime
        self.holder = f"janitor-{socket.gethostname()}-{os.getpid()}"
        self.keeper = KeeperClient(bus.nc, bus.js)
        self.view: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
        self.interval_s = config.autoscale_interval_s
        # Per host: each host's agent acts on its own engines only, so each must get its sweeps.
        self.sweep_job = f"janitor-sweep.{key_token(config.host_id)}"
        # A clean must finish well inside its claim, or streams could start on a half-emptied cache.
        self.exec_timeout_s = max(1.0, 0.75 * config.claim_ttl_s)
        self._slots = asyncio.Semaphore(CLEAN_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleaning: set[str] = set()
        self._failures: dict[str, tuple[int, float]] = {}  # container_id → (consecutive, retry after)
        self.counts = {"cleaned": 0, "bytes": 0, "failed": 0, "busy": 0}

    async def run(self, stop: asyncio.Event) -> None:
        await self.view.start()
        self.runtime.owns({})  # docker: starts learning the daemon's id now, without blocking, for is_ours
        # One group per host: an engine.idle reaches one janitor of every host, and its own host's cleans it.
        queue = f"janitor.{key_token(self.config.host_id)}"
        sub = await self.bus.nc.subscribe(names.ENGINE_IDLE, queue=queue, cb=self.on_idle)
        log.info(
            "started with %gs sweep interval, cleaning on engine.idle too (%s runtime, holder %s)",
            self.interval_s,
            self.runtime.kind,
            self.holder,
        )
        try:
            while await sleep_to_next_epoch(self.interval_s, stop):
                await self.sweep()
        finally:
            await _quietly(sub.unsubscribe())
            await self._finish()
            await self.view.stop()
            log.info(
                "stopping: cleaned %d caches (%s), %d failed, %d skipped busy",
                self.counts["cleaned"],
                format_bytes(self.counts["bytes"]),
                self.counts["failed"],
                self.counts["busy"],
            )

    async def on_idle(self, msg: Msg) -> None:
        try:
            note = decode_idle(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring malformed engine.idle: %s", exc)
            return
        self.spawn(note.container_id, "idle")

    async def sweep(self) -> None:
        self._forget_gone()  # every replica, epoch or not: each keeps its own
        try:
            if not await claim_epoch(self.bus.leases, self.sweep_job, self.interval_s, self.holder):
                return
        except Exception as exc:  # NATS down: the next interval tries again
            log.warning("sweep skipped: %s", exc)
            return
        now = utcnow()
        due = [r for r in engines_to_clean(self.view.values(), now) if self.is_ours(r) and self._may_retry(r)]
        if due:
            log.info("sweep found %d idle engine(s) used since their last clean", len(due))
        for record in due:
            self.spawn(record.container_id, "sweep")

    def is_ours(self, record: EngineRecord) -> bool:
        """Only engines of this runtime on this host; external ones are never cleaned."""
        return (
            record.runtime == self.runtime.kind
            and record.host_id in (None, self.config.host_id)  # None: recorded before hosts were (one host)
            and self.runtime.owns(record.labels)
        )

    def spawn(self, container_id: str, trigger: str) -> None:
        if container_id in self._cleaning:
            return
        if len(self._tasks) >= MAX_QUEUED:
            log.debug("%d cleans queued, leaving %s to the next sweep", len(self._tasks), container_id)
            return
        self._cleaning.add(container_id)
        task = asyncio.get_running_loop().create_task(self._guarded_clean(container_id, trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded_clean(self, container_id: str, trigger: str) -> None:
        try:
            async with self._slots:
                await self.clean(container_id, trigger)
        except Exception:
            CLEANS.labels("error").inc()
            log.exception("clean of %s failed unexpectedly", container_id)
        finally:
            self._cleaning.discard(container_id)

    async def clean(self, container_id: str, trigger: str) -> None:
        known = self.view.get(container_id)
        record = known.value if known else None
        if record is not None and not self.is_ours(record):
            log.debug("not cleaning %s: a %s engine", record.container_name, record.runtime)
            return
        claim_id = await self._claim(container_id, trigger)
        if claim_id is None:
            return
        cleaned_at = utcnow()
        may_still_run = False
        try:
            name, result, may_still_run = await self._run_clean(container_id, record)
        finally:
            if may_still_run:  # streams must not start on a cache still being emptied: let the claim lapse
                log.warning(
                    "keeping the clean claim on %s until it lapses (%gs): %s",
                    name,
                    self.config.claim_ttl_s,
                    result.error,
                )
            else:
                await self._release(container_id, claim_id)
        await self._report(container_id, claim_id, name, result, cleaned_at)

    async def _claim(self, container_id: str, trigger: str) -> str | None:
        try:
            return await self.keeper.claim(container_id, "clean", self.holder)
        except KeeperError as exc:
            if exc.code in (404, 409):  # busy again, or gone: nothing to do now
                self.counts["busy"] += 1
                CLEANS.labels("busy").inc()
                log.debug("skipping %s (%s): %s", container_id, trigger, exc)
            else:
                CLEANS.labels("error").inc()
                log.warning("cannot claim %s for a clean: %s", container_id, exc)
            return None

    async def _run_clean(self, container_id: str, record: EngineRecord | None) -> tuple[str, CleanResult, bool]:
        """(engine name, result, whether the clean may still be running after we gave up on it)."""
        name = record.container_name if record else container_id
        try:
            spec = await self.runtime.get(container_id)
            if spec is None:
                error = f"engine {name} not found in the {self.runtime.kind} runtime"
                return name, CleanResult(ok=False, error=error), False
            name = spec.container_name
            result = await self.runtime.exec_shell(spec, clean_script(spec.cache_dir), timeout_s=self.exec_timeout_s)
        except RuntimeFailure as exc:
            return name, CleanResult(ok=False, error=str(exc)), isinstance(exc, ExecStillRunning)
        return name, parse_clean_output(result.exit_code, result.output), False

    async def _release(self, container_id: str, claim_id: str) -> None:
        try:
            await self.keeper.release(container_id, claim_id)
        except KeeperError as exc:  # the claim lapses by itself after CLAIM_TTL_S
            log.warning("release of %s failed (claim lapses in %gs): %s", container_id, self.config.claim_ttl_s, exc)

    async def _report(self, container_id: str, claim_id: str, name: str, result: CleanResult, at: datetime) -> None:
        event = EngineCleaned(
            container_id=container_id,
            ok=result.ok,
            cache_size_bytes=result.cache_size_bytes,
            cleaned_at=at,
            error=result.error,
        )
        if not await self.keeper.report(names.ENGINE_CLEANED, event, msg_id=f"cleaned.{container_id}.{claim_id}"):
            log.error("engine.cleaned for %s could not be published; the next sweep cleans it again", name)
        if result.ok:
            self.counts["cleaned"] += 1
            self.counts["bytes"] += result.cache_size_bytes or 0
            CLEANS.labels("ok").inc()
            BYTES_CLEANED.inc(result.cache_size_bytes or 0)
            self._failures.pop(container_id, None)
            log.info("cleaned cache of %s (%s)", name, format_bytes(result.cache_size_bytes))
        else:
            self.counts["failed"] += 1
            CLEANS.labels("failed").inc()
            self._note_failure(container_id)
            log.warning("cache clean of %s failed: %s", name, result.error)

    def _note_failure(self, container_id: str) -> None:
        count = self._failures.get(container_id, (0, 0.0))[0] + 1
        wait_s = self.interval_s * min(2 ** (count - 1), MAX_BACKOFF_INTERVALS)
        self._failures[container_id] = (count, time.monotonic() + wait_s)

    def _forget_gone(self) -> None:
        """Failures of engines without a record any more: they will never succeed to clear themselves."""
        for container_id in [c for c in self._failures if self.view.get(c) is None]:
            del self._failures[container_id]

    def _may_retry(self, record: EngineRecord) -> bool:
        failure = self._failures.get(record.container_id)
        return failure is None or time.monotonic() >= failure[1]

    async def _finish(self) -> None:
        """Let running cleans end (they hold claims), then cancel what is left."""
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def _quietly(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception as exc:  # the connection may already be closing
        log.debug("%s", exc)


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    if config.engine_runtime == "external":
        log.info("ENGINE_RUNTIME=external, nothing to clean (external engines are never cleaned)")
        await stop.wait()
        return
    runtime = make_runtime(config)
    try:
        await Janitor(config, bus, runtime).run(stop)
    finally:
        await runtime.close()
