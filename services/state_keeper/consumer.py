"""The durable pull consumer shared by all replicas: fetch, apply, then ack/nak/term.

A message is acknowledged only after its effect is in KV, so a replica killed
mid-batch loses nothing: JetStream redelivers whatever was not acked.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError

from shared import names
from shared.bus import Bus
from shared.errors import describe
from shared.kv import ConflictExhausted
from shared.decode_errors import describe_decode_error
from shared.schemas import EVENT_DECODERS, EVENT_TYPES
from services.state_keeper.events import EngineNotKnownYet, EventApplier, Rejected
from services.state_keeper.stats import Stats

log = logging.getLogger("state-keeper")

MAX_DELIVER = 30
ACK_WAIT_S = 10  # how soon a dead replica's unacked events go to another
MAX_EVENT_BYTES = 64 * 1024
IN_FLIGHT = 128
FETCH_AT_LEAST = IN_FLIGHT // 4


def consumer_config() -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=names.EVENTS_CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        max_deliver=MAX_DELIVER,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=4096,
    )


class EventConsumer:
    def __init__(self, bus: Bus, applier: EventApplier, stats: Stats, unknown_engine_retry_s: float) -> None:
        self.bus = bus
        self.applier = applier
        self.stats = stats
        self.unknown_engine_retry_s = unknown_engine_retry_s
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.js.add_consumer(names.EVENTS_STREAM, consumer_config())
        sub = await self.bus.js.pull_subscribe_bind(durable=names.EVENTS_CONSUMER, stream=names.EVENTS_STREAM)
        log.info("consuming %s as durable %s", names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        while not stop.is_set():
            free = IN_FLIGHT - len(self._tasks)
            if free < FETCH_AT_LEAST and self._tasks:
                # Fetch in batches: a pull request per handful of messages costs more than the messages.
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await sub.fetch(batch=free, timeout=1)
            except nats.errors.TimeoutError:
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
            await self.applier.apply(event, msg.metadata.sequence.stream)
        except Rejected as exc:
            await self._terminate(msg, exc.reason, str(exc))
        except EngineNotKnownYet as exc:
            await self._later(msg, exc)
        except (ConflictExhausted, nats.errors.Error, APIError, OSError, asyncio.TimeoutError) as exc:
            await self._retry(msg, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("unexpected error applying %s; will retry", subject)
            await self._retry(msg, "internal error")
        else:
            self.stats.event_applied(subject)
            await self._settle(msg.ack)

    def _decode(self, msg: Msg) -> object:
        decode = EVENT_DECODERS.get(msg.subject)
        if decode is None:
            raise Rejected("unknown_subject", f"no handler for subject {msg.subject}")
        if len(msg.data) > MAX_EVENT_BYTES:
            raise Rejected("too_large", f"{len(msg.data)} bytes exceeds the {MAX_EVENT_BYTES}-byte event limit")
        try:
            return decode(msg.data)
        except msgspec.ValidationError as exc:
            raise Rejected("invalid", describe_decode_error(exc, msg.data, EVENT_TYPES[msg.subject], "event")) from None
        except msgspec.DecodeError as exc:
            raise Rejected("malformed_json", describe_decode_error(exc, msg.data, what="event")) from None

    async def _terminate(self, msg: Msg, reason: str, message: str) -> None:
        self.stats.event_rejected(reason)
        log.warning("rejected %s (%s): %s", msg.subject, reason, message)
        await self._settle(msg.term)

    async def _later(self, msg: Msg, exc: Exception) -> None:
        first_seen = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else time.time()
        waited = time.time() - first_seen
        if waited >= self.unknown_engine_retry_s or msg.metadata.num_delivered >= MAX_DELIVER - 1:
            await self._terminate(msg, "unknown_engine", f"{exc}; gave up after {waited:.0f}s")
            return
        delay = min(0.25 * 2 ** (msg.metadata.num_delivered - 1), 5.0)
        await self._settle(lambda: msg.nak(delay=delay))

    async def _retry(self, msg: Msg, why: str) -> None:
        delivered = msg.metadata.num_delivered
        if delivered >= MAX_DELIVER - 1:
            await self._terminate(msg, "gave_up", f"{why} after {delivered} deliveries")
            return
        log.warning("retrying %s (%s), %d deliveries left", msg.subject, why, MAX_DELIVER - 1 - delivered)
        await self._settle(lambda: msg.nak(delay=min(0.5 * delivered, 5.0)))

    async def _settle(self, action) -> None:
        try:
            await action()
        except (nats.errors.Error, OSError) as exc:
            # Not acked means redelivered after ack_wait: the handlers are idempotent.
            log.warning("could not settle message: %s", exc)
