"""What the gateway knows and how it asks: KV views for reads, NATS for select and events.

Reads (`GET /engines`, the dashboard, metrics) are answered from watch-fed
in-memory views, never by calling engines or waiting on a NATS round trip, so
their latency does not change when engines hang. Selection is asked of the
state-keeper (request/reply); changes are reported as JetStream events with a
`Nats-Msg-Id`, so a retried HTTP call is stored once.
"""

from __future__ import annotations

import logging
from datetime import datetime

import msgspec
import nats.errors
from nats.js.errors import APIError

from shared import names
from shared.bus import Bus
from shared.errors import describe
from shared.kv import RecordViews
from shared.policy.engines import tidy
from shared.policy.freshness import DEFAULT_HEALTH_MAX_AGE_S, with_effective_health
from shared.schemas import (
    EngineRecord,
    EngineState,
    ErrorReply,
    Event,
    HealthStatus,
    SelectReply,
    SelectRequest,
    StreamRecord,
    StreamStatus,
    decoder,
    encode,
)

log = logging.getLogger(__name__)

SELECT_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 5.0
_decode_select = decoder(SelectReply)
_decode_error = decoder(ErrorReply)


class ApiError(Exception):
    """An answer other than success, with the HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class Fleet(RecordViews):
    def __init__(self, bus: Bus, health_max_age_s: float = DEFAULT_HEALTH_MAX_AGE_S) -> None:
        super().__init__(bus)
        self.health_max_age_s = health_max_age_s

    @property
    def connected(self) -> bool:
        return self.bus.nc.is_connected

    # ------------------------------------------------------------ reads (memory only)

    def engine_list(
        self,
        now: datetime,
        health_status: HealthStatus | None = None,
        state: EngineState | None = None,
        host_id: str | None = None,
    ) -> list[EngineRecord]:
        """Records as readers should see them (`shown`), sorted by container_id."""
        records = (self.shown(item.value, now) for item in self.engines.items().values())
        return sorted(
            (
                r
                for r in records
                if (health_status is None or r.health_status == health_status)
                and (state is None or r.state == state)
                and (host_id is None or r.host_id == host_id)
            ),
            key=lambda r: r.container_id,
        )

    def engine(self, container_id: str, now: datetime) -> EngineRecord | None:
        found = self.engines.get(container_id)
        return self.shown(found.value, now) if found else None

    def shown(self, record: EngineRecord, now: datetime) -> EngineRecord:
        """Lapsed reservations and claims dropped, and a health verdict older than one probe cycle
        read as `unknown`: after a restart the stored `healthy` may describe an engine that is gone."""
        return with_effective_health(tidy(record, now), now, self.health_max_age_s)

    def stream_list(self, status: StreamStatus | None = None, container_id: str | None = None) -> list[StreamRecord]:
        return sorted(
            (
                s
                for s in self.streams.values()
                if (status is None or s.status == status) and (container_id is None or s.container_id == container_id)
            ),
            key=lambda s: s.stream_id,
        )

    def active_streams(self) -> int:
        return sum(1 for s in self.streams.values() if s.status == "started")

    # ------------------------------------------------------------ shared.compat.Directory

    def has_engine(self, container_id: str) -> bool:
        return self.engines.get(container_id) is not None

    def engine_at(self, host: str, port: int) -> str | None:
        for key, item in self.engines.items().items():
            if item.value.host == host and item.value.port == port:
                return key
        return None

    def latest_stream_on(self, container_id: str) -> str | None:
        started = [s for s in self.streams.values() if s.container_id == container_id and s.status == "started"]
        if not started:
            return None
        return max(started, key=lambda s: (s.started_at.timestamp() if s.started_at else 0.0, s.stream_id)).stream_id

    # ------------------------------------------------------------ asks and reports

    async def select(self, request: SelectRequest) -> SelectReply:
        """engine.select over NATS; the state-keeper's error codes come back as ApiError."""
        try:
            msg = await self.bus.nc.request(names.ENGINE_SELECT, encode(request), timeout=SELECT_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            raise ApiError(503, "no state-keeper is answering engine.select; is it running?", 2.0) from None
        except nats.errors.TimeoutError:
            raise ApiError(
                503, f"the state-keeper did not answer engine.select within {SELECT_TIMEOUT_S:g}s", 1.0
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise ApiError(503, f"NATS is unavailable ({type(exc).__name__})", 2.0) from None
        code = (msg.headers or {}).get("Nats-Service-Error-Code")
        if code:
            raise _service_error(code, msg.data)
        try:
            return _decode_select(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("engine.select: undecodable reply: %s", exc)
            raise ApiError(502, "the state-keeper sent an undecodable reply") from None

    async def publish(self, subject: str, event: Event, msg_id: str) -> None:
        """Store one event in ACE_EVENTS; a retry with the same msg_id is dropped as a duplicate."""
        try:
            await self.bus.js.publish(
                subject, encode(event), headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT_S
            )
        except nats.errors.TimeoutError:
            # It may still be stored; a retry with the same Nats-Msg-Id is safe either way.
            raise ApiError(
                503, f"JetStream did not acknowledge {subject} within {PUBLISH_TIMEOUT_S:g}s; retry", 1.0
            ) from None
        except nats.errors.NoRespondersError:
            raise ApiError(503, f"no JetStream stream accepts {subject}; is NATS running with -js?", 2.0) from None
        except (APIError, nats.errors.Error, OSError) as exc:
            raise ApiError(503, f"could not publish {subject}: {describe(exc)}", 2.0) from None


def _service_error(code: str, data: bytes) -> ApiError:
    try:
        reply = _decode_error(data)
        message, retry_after = reply.error, reply.retry_after_s
    except msgspec.DecodeError:
        message, retry_after = data.decode(errors="replace")[:200] or "state-keeper error", None
    status = int(code) if code.isdigit() and 400 <= int(code) <= 599 else 502
    return ApiError(status, message, retry_after)
