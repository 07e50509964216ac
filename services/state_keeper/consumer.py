"""The durable pull consumer shared by all replicas: fetch, apply, then ack/nak/term.

A message is acknowledged only after its effect is in KV, so a replica killed
mid-batch loses nothing: JetStream redelivers whatever was not acked.

Two kinds of failure are kept apart. An event that can never apply is
terminated and counted. A store that does not answer (no stream leader, a
timeout, a connection down) says nothing about the event: such a delivery is
kept and retried in place, with in-progress acks so it is not redelivered, and
no new messages are fetched until the store answers again. A nak — even a
delayed one — is a new delivery, so naking through an outage longer than
`max_deliver` deliveries would drop good events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from services.state_keeper.events import EngineNotKnownYet, EventApplier, Rejected
from services.state_keeper.stats import Stats
from shared import names
from shared.bus import Bus, BusError
from shared.decode_errors import describe_decode_error
from shared.errors import describe
from shared.kv import ConflictExhausted
from shared.schemas import EVENT_DECODERS, EVENT_TYPES

log = logging.getLogger("state-keeper")
T = TypeVar("T")

MAX_DELIVER = 30
ACK_WAIT_S = 10  # how soon a dead replica's unacked events go to another
OUTAGE_WAIT_S = (0.25, 5.0)  # first and longest pause between attempts while the store is unavailable
MAX_EVENT_BYTES = 64 * 1024
IN_FLIGHT = 128
FETCH_AT_LEAST = IN_FLIGHT // 4
READY_WAIT_S = 0.01  # how long a pull for more waits: never holds a fetched event longer


def consumer_config(max_deliver: int = MAX_DELIVER, ack_wait_s: float = ACK_WAIT_S) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=names.EVENTS_CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait_s,
        max_ack_pending=4096,
    )


async def require_consumer(bus: Bus) -> None:
    """With a role key the durable is admin's (`aceorch setup`): bind to it, or say it is missing."""
    try:
        await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    except NotFoundError:
        raise BusError(
            f"the durable consumer {names.EVENTS_CONSUMER} on {names.EVENTS_STREAM} does not exist: "
            "with a role key the state-keeper binds to it and never creates it; run `aceorch setup` (admin key) first"
        ) from None


async def fetch_ready(sub: JetStreamContext.PullSubscription, most: int) -> list[Msg]:
    """Wait for the next event, then take what else is ready, up to `most`.

    nats-py's `fetch(batch=n)` keeps what a waiting pull receives until n messages have come
    or its timeout ends. With two replicas on the durable that held events for the whole
    second while the other replica applied later ones, and a health report overtaken that
    way is dropped (`observe`), breaking an engine's fall streak: a hung engine stayed
    selectable a probe longer (tests/reliability/test_chaos_engine_faults.py: 36 reports lost
    in 20 s). Fetching one returns the moment it comes; the rest are taken only as far as they
    are already there (a pull of at most READY_WAIT_S).
    """
    messages = await sub.fetch(batch=1, timeout=1)
    if most > 1:
        try:
            messages += await sub.fetch(batch=most - 1, timeout=READY_WAIT_S)
        except (TimeoutError, nats.errors.Error, APIError, OSError):
            pass  # nothing more ready; an outage shows on the next fetch
    return messages


def store_unavailable(exc: BaseException) -> bool:
    """The store did not answer: nothing is wrong with the event, it must wait (not count a delivery).

    A conflict storm, a refused write (4xx) or a bug of ours is not an outage: those are
    retried as counted deliveries, so a poisonous event still ends after `max_deliver`.
    """
    if isinstance(exc, APIError):
        return (exc.code or 0) >= 500  # e.g. 503: the bucket's stream has no leader
    return isinstance(
        exc,
        (
            asyncio.TimeoutError,  # nats' TimeoutError too: the write may be applied later (DESIGN §9)
            NoStreamResponseError,  # no stream took the write
            nats.errors.NoRespondersError,
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
            OSError,
        ),
    )


class EventConsumer:
    def __init__(
        self,
        bus: Bus,
        applier: EventApplier,
        stats: Stats,
        unknown_engine_retry_s: float,
        *,
        max_deliver: int = MAX_DELIVER,
        ack_wait_s: float = ACK_WAIT_S,
    ) -> None:
        self.bus = bus
        self.applier = applier
        self.stats = stats
        self.unknown_engine_retry_s = unknown_engine_retry_s
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._held = 0  # deliveries waiting for the store to answer
        self._outage_since = 0.0
        self._store_answers = asyncio.Event()
        self._store_answers.set()
        self.rejections = RejectionLog()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        if self.bus.identity.creates_layout:  # with a role key it is admin's, checked at start-up
            await self.bus.js.add_consumer(names.EVENTS_STREAM, consumer_config(self.max_deliver, self.ack_wait_s))
        sub = await self.bus.js.pull_subscribe_bind(durable=names.EVENTS_CONSUMER, stream=names.EVENTS_STREAM)
        log.info("consuming %s as durable %s", names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        while not stop.is_set():
            self.rejections.flush()
            if not self._store_answers.is_set():
                # What we fetched now would only wait as well, each fetch a delivery counted.
                await _wait(self._store_answers, 1.0)
                continue
            free = IN_FLIGHT - len(self._tasks)
            if free < FETCH_AT_LEAST and self._tasks:
                # Fetch in batches: a pull request per handful of messages costs more than the messages.
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await fetch_ready(sub, free)
            except TimeoutError:  # nats' too: nothing came within the second
                continue
            except (nats.errors.Error, APIError, OSError) as exc:
                log.warning("fetch failed (%s); retrying", describe(exc))
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                task = asyncio.get_running_loop().create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await self.finish()
        self.rejections.flush(force=True)
        # Messages fetched but not handled stay unacked and are redelivered to another replica;
        # unsubscribing first keeps the connection's drain from waiting on them.
        await sub.unsubscribe()

    async def finish(self, timeout_s: float = 10.0) -> None:
        """Let in-flight messages complete (and be acked); what does not finish is redelivered."""
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, msg: Msg) -> None:
        subject = msg.subject
        try:
            event = self._decode(msg)
            await self._apply_through_outages(msg, event)
        except Rejected as exc:
            await self._terminate(msg, exc.reason, str(exc))
        except EngineNotKnownYet as exc:
            await self._later(msg, exc)
        except (TimeoutError, ConflictExhausted, nats.errors.Error, APIError, OSError) as exc:
            await self._retry(msg, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("unexpected error applying %s; will retry", subject)
            await self._retry(msg, "internal error")
        else:
            self.stats.event_applied(subject)
            await self._settle(msg.ack)

    async def _apply_through_outages(self, msg: Msg, event: object) -> None:
        """Apply; while the store is unavailable keep this delivery and try again (every handler
        is idempotent). In-progress acks (+WPI) restart ack_wait without a redelivery, so the
        message stays ours and `num_delivered` stays put; only if this replica dies does
        JetStream hand it to another. Stopping gives it up to the ordinary retry."""
        pause = OUTAGE_WAIT_S[0]
        keep_alive: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    await self.applier.apply(event, msg.metadata.sequence.stream)
                    return
                except Exception as exc:
                    if not store_unavailable(exc) or self._stop.is_set():
                        raise
                    if keep_alive is None:
                        keep_alive = asyncio.get_running_loop().create_task(self._keep_alive(msg))
                        self._hold(+1, exc)
                    log.debug("store unavailable applying %s (%s); trying again in %.2fs", msg.subject, exc, pause)
                await _wait(self._stop, pause)
                pause = min(pause * 2, OUTAGE_WAIT_S[1])
        finally:
            if keep_alive is not None:
                keep_alive.cancel()
                self._hold(-1, None)

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except (nats.errors.Error, OSError) as exc:  # not kept alive: redelivered, which is safe
                log.debug("could not extend %s: %s", msg.subject, describe(exc))

    def _hold(self, change: int, exc: BaseException | None) -> None:
        """Count deliveries held through an outage; say once when it starts and once when it ends."""
        self._held += change
        if change > 0 and exc is not None and self._store_answers.is_set():  # exc: set with every +1
            self._store_answers.clear()
            self._outage_since = time.monotonic()
            log.warning(
                "store unavailable (%s: %s); holding events until it answers, not fetching more",
                type(exc).__name__,
                describe(exc),
            )
        elif self._held == 0 and not self._store_answers.is_set():
            self._store_answers.set()
            log.info("store answers again after %.1fs; fetching events again", time.monotonic() - self._outage_since)

    def _decode(self, msg: Msg) -> object:
        decode = EVENT_DECODERS.get(msg.subject)
        if decode is None:
            raise Rejected("unknown_subject", f"no handler for subject {msg.subject}")
        return decode_message(msg.data, decode, EVENT_TYPES[msg.subject])

    async def _terminate(self, msg: Msg, reason: str, message: str) -> None:
        self.stats.event_rejected(reason)
        self.rejections.rejected(msg.subject, reason, message)
        await self._settle(msg.term)

    async def _later(self, msg: Msg, exc: Exception) -> None:
        first_seen = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else time.time()
        waited = time.time() - first_seen
        if waited >= self.unknown_engine_retry_s or msg.metadata.num_delivered >= self.max_deliver - 1:
            await self._terminate(msg, "unknown_engine", f"{exc}; gave up after {waited:.0f}s")
            return
        delay = min(0.25 * 2 ** (msg.metadata.num_delivered - 1), 5.0)
        await self._settle(lambda: msg.nak(delay=delay))

    async def _retry(self, msg: Msg, why: str) -> None:
        delivered = msg.metadata.num_delivered
        if delivered >= self.max_deliver - 1:
            await self._terminate(msg, "gave_up", f"{why} after {delivered} deliveries")
            return
        log.warning("retrying %s (%s), %d deliveries left", msg.subject, why, self.max_deliver - 1 - delivered)
        await self._settle(lambda: msg.nak(delay=min(0.5 * delivered, 5.0)))

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except (nats.errors.Error, OSError) as exc:
            # Not acked means redelivered after ack_wait: the handlers are idempotent.
            log.warning("could not settle message: %s", exc)


def decode_message(data: bytes, decode: Callable[[bytes], T], kind: type) -> T:
    """A message from the bus, strictly decoded as `kind`, or `Rejected` saying what is wrong with it."""
    if len(data) > MAX_EVENT_BYTES:
        raise Rejected("too_large", f"{len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte event limit")
    try:
        return decode(data)
    except msgspec.ValidationError as exc:
        raise Rejected("invalid", describe_decode_error(exc, data, kind, "event")) from None
    except msgspec.DecodeError as exc:
        raise Rejected("malformed_json", describe_decode_error(exc, data, what="event")) from None


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until `event` is set or `timeout_s` passed, whichever comes first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass


class RejectionLog:
    """Rejections logged without flooding: the first few of each (subject, reason) per interval in
    full, the rest as one summary line when the interval ends. (One client publishing 3,000
    malformed events wrote 3,000 WARNING lines.) Every rejection is still counted in Stats."""

    def __init__(self, first: int = 5, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.interval_s = interval_s
        self.clock = clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # (subject, reason) → [started, logged, suppressed]

    def rejected(self, subject: str, reason: str, message: str) -> None:
        now = self.clock()
        window = self._windows.get((subject, reason))
        if window is not None and now - window[0] >= self.interval_s:
            self._summarise(subject, reason, window)
            window = None
        if window is None:
            window = self._windows[(subject, reason)] = [now, 0, 0]
        if window[1] < self.first:
            window[1] += 1
            log.warning("rejected %s (%s): %s", subject, reason, message)
        else:
            window[2] += 1

    def flush(self, force: bool = False) -> None:
        """Summarise and forget the windows whose interval is over (all of them when `force`)."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if force or now - window[0] >= self.interval_s:
                self._summarise(*key, window)
                del self._windows[key]

    def _summarise(self, subject: str, reason: str, window: list[float]) -> None:
        if window[2]:
            log.warning(
                "rejected %s more %s events on %s in the last %.0f s",
                format(window[2], ","),
                reason,
                subject,
                self.clock() - window[0],
            )
