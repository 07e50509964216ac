"""Fleet history: one sample per HISTORY_INTERVAL_S into ACE_HISTORY, and every replica's copy of it.

Every gateway replica wakes at each interval boundary, reads the fleet from its
views, the state-keepers' counters and the probe latencies it saw since the
last boundary, and publishes the sample with `Nats-Msg-Id history.<epoch>`:
the stream's duplicate window keeps the first and drops the others, so the
sample is stored once however many replicas run. Why not an epoch marker, as
the sweeps use: the winner of a marker can be killed between winning and
writing, and that interval's sample is then lost (a CI run saw it); racing
with the write itself costs the same one message per replica per interval and
loses nothing while one replica lives.

Each replica keeps the samples of the last HISTORY_MAX_AGE_H in memory, read
from ACE_HISTORY's first message on and then followed live by batched direct
gets (shared/stream_read.py: no consumer, so the gateway needs no consumer grant
on the stream): a restarted gateway gets the history back from the stream, and
every replica sees every sample live (for /api/live) whichever replica wrote it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import msgspec
import nats.errors
from nats.js.errors import Error as JsError

from services.gateway.fleet import Fleet
from services.gateway.metrics import Metrics
from shared import names
from shared.errors import describe
from shared.lease import epoch_of, sleep_to_next_epoch
from shared.policy.history import downsample, expired, per_second, sample_of
from shared.schemas import EngineHealth, HistoryPoint, HistorySample, decode_sample, encode, utcnow
from shared.stream_read import POLL_S, Stored, StreamFollower

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
MAX_LATENCIES = 100_000  # probe latencies kept per interval; beyond, later ones are not counted


class History:
    def __init__(self, fleet: Fleet, metrics: Metrics, interval_s: float, max_age_h: float) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_age_s = max_age_h * 3600
        # By time, not epoch: epochs of different HISTORY_INTERVAL_S settings are different units.
        self.samples: dict[datetime, HistorySample] = {}
        self.listeners: list[Callable[[HistorySample], None]] = []
        self.written = 0  # samples this replica published first (the stream kept its copy)
        self.undecodable = 0
        self._latencies: list[float] = []
        self._previous: tuple[Counter[str], float] | None = None
        self._reading: asyncio.Task[tuple[Counter[str], float] | None] | None = None
        # Polled at least twice an interval, so a sample shows well before the next one is due.
        self._follower = StreamFollower(
            fleet.bus.nc, names.HISTORY_STREAM, [names.HISTORY_SAMPLE], self._on_sample, min(POLL_S, interval_s / 2)
        )
        metrics.observers.append(self._observe)

    # ------------------------------------------------------------ reading

    def series(self, range_s: float) -> tuple[float, list[HistoryPoint]]:
        return downsample(self.samples.values(), range_s, utcnow())

    def prune(self) -> None:
        """Drop what the stream has aged out too (once per interval, not per sample: a restart
        loads a day of samples at once)."""
        now = utcnow()
        for at in [at for at, s in self.samples.items() if expired(s, now, self.max_age_s)]:
            del self.samples[at]

    async def start(self) -> None:
        self._follower.start()

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await self._follower.stop()

    def _on_sample(self, stored: Stored) -> None:
        try:
            sample = decode_sample(stored.data)
        except msgspec.DecodeError as exc:
            self.undecodable += 1
            log.warning("history: undecodable sample at sequence %d: %s", stored.seq, exc)
            return
        self.remember(sample)

    def remember(self, sample: HistorySample) -> None:
        if sample.at in self.samples:
            return
        self.samples[sample.at] = sample
        for listener in self.listeners:
            listener(sample)

    # ------------------------------------------------------------ writing

    def _observe(self, observation: EngineHealth) -> None:
        if observation.latency_ms is not None and len(self._latencies) < MAX_LATENCIES:
            self._latencies.append(observation.latency_ms)

    async def _read_counters(self) -> tuple[Counter[str], float] | None:
        totals = await self.metrics.selection_totals()
        return None if totals is None else (totals, time.monotonic())

    def _take_reading(self) -> tuple[Counter[str], float] | None:
        """The counters gathered since the last boundary; None if that gather failed or is late."""
        task, self._reading = self._reading, None
        if task is None:
            return None
        if not task.done():
            task.cancel()
            return None
        if task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("history sampler started with %gs interval, keeping %gh", self.interval_s, self.max_age_s / 3600)
        while await sleep_to_next_epoch(self.interval_s, stop):
            self.prune()
            try:
                await self.tick(epoch_of(time.time(), self.interval_s))
            except (nats.errors.Error, JsError, OSError) as exc:
                log.warning("history: sample not written: %s", describe(exc))

    async def tick(self, epoch: int) -> bool:
        """Read the fleet for `epoch` and write it; True if this replica's copy is the one stored.

        Nothing here waits on the state-keepers: their counters are gathered in the background
        (STATS_WINDOW_S) and used at the next boundary. Waiting at the boundary made a loaded
        replica's tick run past the next boundary, and every replica skipped that epoch."""
        latencies, self._latencies = self._latencies, []
        reading = self._take_reading()
        self._reading = asyncio.get_running_loop().create_task(self._read_counters())
        before, self._previous = self._previous, reading
        rates = None if before is None or reading is None else per_second(*before, *reading)
        now = utcnow()
        sample = sample_of(
            epoch,
            self.interval_s,
            self.fleet.engine_list(now),
            self.fleet.stream_list(status="started"),
            rates,
            latencies,
        )
        ack = await self.fleet.bus.js.publish(
            names.HISTORY_SAMPLE,
            encode(sample),
            headers={"Nats-Msg-Id": f"history.{epoch}"},
            timeout=PUBLISH_TIMEOUT_S,
        )
        if ack.duplicate:
            return False  # another replica's sample of this epoch was stored first
        self.written += 1
        return True
