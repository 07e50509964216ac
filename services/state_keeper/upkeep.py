"""Started streams after their start (DESIGN §10): their figures, and ending those nobody plays.

`stream.stats` (core NATS, a queue group across replicas) puts the latest
figures on the stream's record. Once per STAT_INTERVAL_S, one replica (the
epoch's winner, shared/lease.py) sweeps the started streams:
- `proxy_lost`: the stream's proxy replica is no longer among the live members
  of the proxy group, as watched by this replica for at least a TTL without a
  gap (after a start or a reconnect, a missing heartbeat may just be unheard);
- `session_gone`: the stream's figures are stale and its stat URL answers that
  the engine no longer knows the session. An engine that does not answer is
  not proof: it may be down, which the prober judges.
A stream is ended by publishing `stream.ended` to ACE_EVENTS with a fixed
`Nats-Msg-Id`, so it is applied like any proxy's end, by the consumer, once.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from services.state_keeper.consumer import RejectionLog, decode_message
from services.state_keeper.events import Rejected
from services.state_keeper.stats import Stats
from services.state_keeper.store import Store
from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.engine_client import new_client, session_gone
from shared.errors import describe
from shared.lease import claim_epoch, sleep_to_next_epoch
from shared.membership import Membership, new_member_id
from shared.policy.streams import (
    PROXY_LOST,
    SESSION_GONE,
    apply_stats,
    lost_to_proxies,
    needs_session_check,
    stat_url_on_engine,
)
from shared.schemas import EngineRecord, StreamEnded, StreamRecord, StreamStats, decoder, encode, utcnow

log = logging.getLogger("state-keeper")

QUEUE_GROUP = "state-keeper"
STAT_CHECKS = 16  # stat URLs fetched at once by a sweep
STAT_TIMEOUT_S = 2.0  # per stat URL, at most; an engine slower than this is left to the prober
PUBLISH_TIMEOUT_S = 5.0

_decode_stream_stats = decoder(StreamStats)


class StreamUpkeep:
    def __init__(self, store: Store, config: Config, stats: Stats) -> None:
        self.store = store
        self.bus: Bus = store.bus
        self.interval_s = config.stat_interval_s
        self.stats = stats
        self.rejections = RejectionLog()
        self.proxies = Membership(
            self.bus, names.PROXY_GROUP, new_member_id("state-keeper-"), config.stat_interval_s, watch_only=True
        )
        self._holder = f"{socket.gethostname()}-{id(self)}"

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.bus.nc.subscribe(names.STREAM_STATS, queue=QUEUE_GROUP, cb=self.on_stats)
        client = new_client(STAT_CHECKS)
        try:
            await self.proxies.start()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.proxies.run(stop))
                group.create_task(self._sweeps(client, stop))
        finally:
            await client.aclose()
            await self.proxies.stop()
            await _unsubscribe(sub)
            self.rejections.flush(force=True)

    # ------------------------------------------------------------ stream.stats

    async def on_stats(self, msg: Msg) -> None:
        """Never raises: a bad report is counted and logged (rate-limited), a failed write dropped
        (the proxy reports again within STAT_INTERVAL_S)."""
        try:
            report = decode_message(msg.data, _decode_stream_stats, StreamStats)
        except Rejected as exc:
            self.stats.stream_stats_report(exc.reason)
            self.rejections.rejected(msg.subject, exc.reason, str(exc))
            return
        known = self.store.streams.get(report.stream_id)
        if known is None or known.value.status != "started":
            # Unknown to us (no record is made out of figures) or ended: settled without a round trip.
            self.stats.stream_stats_report("ignored")
            return
        now = utcnow()
        try:
            outcome = await self.store.update_stream(report.stream_id, lambda s: apply_stats(s, report, now))
        except Exception as exc:
            log.warning("stats of stream %s not stored: %s", report.stream_id, describe(exc))
            return
        self.stats.stream_stats_report("applied" if outcome.written else "ignored")

    # ------------------------------------------------------------ sweeps

    async def _sweeps(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while await sleep_to_next_epoch(self.interval_s, stop):
            self.rejections.flush()
            try:
                if await claim_epoch(self.bus.leases, "state-keeper-streams", self.interval_s, self._holder):
                    await self.sweep(client)
            except Exception as exc:  # the next interval tries again
                log.warning("stream sweep failed: %s", describe(exc))

    async def sweep(self, client: httpx.AsyncClient) -> None:
        started = [s for s in self.store.streams.values() if s.status == "started"]
        lost: list[StreamRecord] = []
        if self.proxies.watched_for() >= self.proxies.ttl_s:
            lost = lost_to_proxies(started, self.proxies.members)
        for stream in lost:
            log.warning(
                "stream %s: its proxy %s stopped heartbeating over %gs ago; ending it (%s)",
                stream.stream_id,
                stream.proxy,
                self.proxies.ttl_s,
                PROXY_LOST,
            )
            await self.end(stream, PROXY_LOST)
        now = utcnow()
        ended = {s.stream_id for s in lost}
        due = [
            s
            for s in started
            if s.stream_id not in ended
            and needs_session_check(s, now, self.interval_s)
            and stat_url_on_engine(s, self._engine(s.container_id))
        ]
        if due:
            await self._check_sessions(client, due)

    def _engine(self, container_id: str | None) -> EngineRecord | None:
        found = self.store.engines.get(container_id) if container_id else None
        return found.value if found else None

    async def _check_sessions(self, client: httpx.AsyncClient, streams: list[StreamRecord]) -> None:
        slots = asyncio.Semaphore(STAT_CHECKS)
        timeout_s = min(STAT_TIMEOUT_S, self.interval_s)

        async def check(stream: StreamRecord) -> None:
            async with slots:
                if not await session_gone(client, stream.stat_url or "", timeout_s):
                    return
            log.warning(
                "stream %s: engine %s no longer knows its session; ending it (%s)",
                stream.stream_id,
                stream.container_id,
                SESSION_GONE,
            )
            try:
                await self.end(stream, SESSION_GONE)
            except Exception as exc:  # the others' checks go on; the next sweep tries this one again
                log.warning("stream %s: its end not published: %s", stream.stream_id, describe(exc))

        async with asyncio.TaskGroup() as group:
            for stream in streams:
                group.create_task(check(stream))

    async def end(self, stream: StreamRecord, reason: str) -> None:
        """Publish the stream's end to ACE_EVENTS; the fixed message id makes a repeat (the next sweep,
        before our view saw the end applied; another replica's sweep) a duplicate the server drops."""
        event = StreamEnded(
            stream_id=stream.stream_id, container_id=stream.container_id, reason=reason, ended_at=utcnow()
        )
        await self.bus.js.publish(
            names.STREAM_ENDED,
            encode(event),
            headers={"Nats-Msg-Id": f"{reason}.{stream.stream_id}"},
            timeout=PUBLISH_TIMEOUT_S,
        )


async def _unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except (nats.errors.Error, APIError, OSError) as exc:  # the connection may be gone already
        log.debug("stream.stats subscription: %s", exc)
