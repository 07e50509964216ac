"""The API's route handlers, as closures over the running Fleet (the app keeps no state).

Reads come from the fleet's views; writes become JetStream events or a
state-keeper request; bodies are decoded strictly (`strict_body`).
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from litestar import Response, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST

from services.gateway.bodies import (
    EngineAccepted,
    Health,
    NatsState,
    Ready,
    RegisterEngineBody,
    StreamAccepted,
    strict_body,
)
from services.gateway.errors import AnyRequest
from services.gateway.fleet import ApiError, Fleet
from services.gateway.live import LiveFeed
from services.gateway.metrics import Metrics
from services.gateway.ready import Readiness
from shared import names
from shared.compat import (
    CompatError,
    StreamEndedBody,
    StreamStartedBody,
    engine_id_for,
    stream_ended_event,
    stream_started_event,
)
from shared.schemas import (
    EngineRecord,
    EngineRegistered,
    EngineRemoved,
    EngineState,
    ErrorReply,
    HealthStatus,
    SelectReply,
    SelectRequest,
    StreamRecord,
    StreamStatus,
    utcnow,
)

T = TypeVar("T")
_DESCRIPTIONS = {
    400: "Malformed JSON or an invalid query/path value",
    401: "Missing `Authorization: Bearer <API_KEY>` (only when API_KEY is set)",
    403: "Wrong API key, or a write from a web page of another origin",
    404: "No such engine or stream",
    409: "Conflicts with an engine the provisioner manages (it alone starts and removes those)",
    413: "Body larger than MAX_BODY_BYTES",
    415: "A write body that is not Content-Type: application/json",
    422: "Well-formed JSON that does not fit the schema",
    503: "No capacity, or NATS/the state-keeper unavailable; see Retry-After",
}
WRITE_ERRORS = (400, 401, 403, 413, 415, 422, 503)


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorReply, description=_DESCRIPTIONS[code]) for code in codes}


def read_routes(fleet: Fleet) -> list[HTTPRouteHandler]:
    @get("/engines", tags=["engines"], responses=errors(400))
    async def list_engines(
        health_status: HealthStatus | None = None,
        engine_state: EngineState | None = Parameter(query="state", default=None),  # `state` is reserved
        host: str | None = Parameter(
            query="host", default=None, max_length=255, description="only the engines on this HOST_ID"
        ),
    ) -> list[EngineRecord]:
        """Engine records exactly as stored in KV (DESIGN §4), sorted by container_id; `host_id` is the
        host each runs on (the HOST_ID of its provisioner)."""
        return fleet.engine_list(utcnow(), health_status, engine_state, host)

    @get("/engines/{container_id:str}", tags=["engines"], responses=errors(404))
    async def get_engine(container_id: str) -> EngineRecord:
        record = fleet.engine(container_id, utcnow())
        if record is None:
            raise ApiError(404, f"engine {container_id} not found")
        return record

    @get("/streams", tags=["streams"], responses=errors(400))
    async def list_streams(status: StreamStatus | None = None, container_id: str | None = None) -> list[StreamRecord]:
        """Stream records (ended ones are kept for STREAM_TTL_S), sorted by stream_id."""
        return fleet.stream_list(status, container_id)

    return [list_engines, get_engine, list_streams]


def write_routes(fleet: Fleet, mutating: dict[str, Any]) -> list[HTTPRouteHandler]:
    """Selection, engine registration and proxy events; `mutating` carries the API-key guard."""

    @post("/engines/select", tags=["engines"], status_code=200, responses=errors(*WRITE_ERRORS), **mutating)
    async def select_engine(request: AnyRequest, data: SelectRequest | None = None) -> SelectReply:
        """The HTTP form of `engine.select`: an engine plus a reservation that a stream_started consumes."""
        return await fleet.select(await strict_body(request, SelectRequest) or SelectRequest())

    @post("/engines", tags=["engines"], status_code=202, responses=errors(409, *WRITE_ERRORS), **mutating)
    async def register_engine(request: AnyRequest, data: RegisterEngineBody) -> EngineAccepted:
        """Register an engine that runs elsewhere (runtime `external`): probed and selected, never removed by us."""
        event, existed = _registration(fleet, await _required(request, RegisterEngineBody))
        container_id = event.container_id
        await fleet.publish(names.ENGINE_REGISTERED, event, f"engine.registered.{container_id}.{uuid.uuid4().hex}")
        return EngineAccepted(container_id=container_id, detail="updated" if existed else "registration accepted")

    @delete(
        "/engines/{container_id:str}",
        tags=["engines"],
        status_code=202,
        responses=errors(404, 409, 401, 403, 503),
        **mutating,
    )
    async def remove_engine(container_id: str) -> EngineAccepted:
        """Deregister an external engine: its streams end and its record goes (`engine.removed`).

        Engines the provisioner manages are refused (409): the gateway cannot stop
        them, and dropping only the record would have the provisioner adopt the
        still-running engine again at its next sweep.
        """
        record = fleet.engine(container_id, utcnow())
        if record is None:
            raise ApiError(404, f"engine {container_id} not found")
        if record.runtime != "external":
            raise ApiError(409, managed_removal_refused(container_id, record.runtime))
        event = EngineRemoved(container_id=container_id, reason="deregistered via API")
        await fleet.publish(names.ENGINE_REMOVED, event, f"engine.removed.{container_id}.{uuid.uuid4().hex}")
        return EngineAccepted(container_id=container_id, detail="deregistered")

    @post(
        ["/events/stream_started", "/api/v1/events/stream_started"],
        tags=["events"],
        status_code=202,
        responses=errors(404, *WRITE_ERRORS),
        **mutating,
    )
    async def stream_started(request: AnyRequest, data: StreamStartedBody) -> StreamAccepted:
        """Our `stream.started` fields, or the reference orchestrator's shape (engine/stream/session/labels)."""
        data = await _required(request, StreamStartedBody)
        try:
            event = stream_started_event(data, fleet, utcnow(), fallback_id=f"s-{uuid.uuid4().hex}")
        except CompatError as exc:
            raise ApiError(exc.status, str(exc)) from None
        await fleet.publish(names.STREAM_STARTED, event, f"stream.started.{event.stream_id}")
        return StreamAccepted(stream_id=event.stream_id, container_id=event.container_id)

    @post(
        ["/events/stream_ended", "/api/v1/events/stream_ended"],
        tags=["events"],
        status_code=202,
        responses=errors(404, *WRITE_ERRORS),
        **mutating,
    )
    async def stream_ended(request: AnyRequest, data: StreamEndedBody) -> StreamAccepted:
        """`{stream_id, container_id?, reason?}`; without stream_id, the engine's newest stream ends."""
        data = await _required(request, StreamEndedBody)
        try:
            event = stream_ended_event(data, fleet, utcnow())
        except CompatError as exc:
            raise ApiError(exc.status, str(exc)) from None
        await fleet.publish(names.STREAM_ENDED, event, f"stream.ended.{event.stream_id}")
        return StreamAccepted(stream_id=event.stream_id, container_id=event.container_id)

    return [select_engine, register_engine, remove_engine, stream_started, stream_ended]


def ops_routes(
    fleet: Fleet, feed: LiveFeed, metrics: Metrics, readiness: Readiness, live_guards: dict[str, Any]
) -> list[HTTPRouteHandler]:
    @get("/api/live", tags=["live"], media_type="text/event-stream", responses=errors(401, 403, 503), **live_guards)
    async def live() -> Stream:
        """Server-Sent Events: `snapshot` (engines, started streams), then `engine` and `stream` changes.

        At most LIVE_MAX_CLIENTS at once (then 503 with Retry-After); with API_KEY
        set, the key is needed (`Authorization: Bearer` or `?key=`, for EventSource).
        """
        return Stream(
            feed.open(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @get("/healthz", tags=["health"], responses={503: ResponseSpec(data_container=Health, description="NATS down")})
    async def healthz() -> Response[Health]:
        nc = fleet.bus.nc
        state: NatsState = (
            "connected"
            if nc.is_connected
            else "reconnecting"
            if nc.is_reconnecting
            else "closed"
            if nc.is_closed
            else "disconnected"
        )
        body = Health(
            status="ok" if state == "connected" else "unavailable",
            nats=state,
            engines=len(fleet.engines.items()),
            active_streams=fleet.active_streams(),
        )
        return Response(body, status_code=200 if state == "connected" else 503)

    @get(
        "/readyz", tags=["health"], responses={503: ResponseSpec(data_container=Ready, description="a part is missing")}
    )
    async def readyz() -> Response[Ready]:
        """Ready to serve every endpoint: NATS connected and a state-keeper answering; else 503 naming what is missing."""
        missing = await readiness.missing()
        body = Ready(status="unavailable" if missing else "ready", missing=missing)
        return Response(body, status_code=503 if missing else 200, headers={"Retry-After": "2"} if missing else None)

    @get("/metrics", tags=["health"], media_type=CONTENT_TYPE_LATEST)
    async def prometheus() -> Response[bytes]:
        return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [live, healthz, readyz, prometheus]


async def _required(request: AnyRequest, kind: type[T]) -> T:
    body = await strict_body(request, kind)
    if body is None:
        raise ApiError(422, "a JSON object body is required")
    return body


def managed_removal_refused(container_id: str, runtime: str) -> str:
    return (
        f"engine {container_id} is a {runtime} engine the provisioner manages; the gateway cannot stop it: "
        "the reaper removes idle engines above MIN_REPLICAS and MIN_FREE_REPLICAS (AUTO_DELETE=true), "
        "so lower those to shrink the pool"
    )


def _registration(fleet: Fleet, data: RegisterEngineBody) -> tuple[EngineRegistered, bool]:
    """The event registering an external engine, and whether it updates a known one.

    Without an id, an address already registered keeps its id (re-posting is
    idempotent); engines the provisioner manages are never turned external.
    """
    known_id = fleet.engine_at(data.host, data.port)
    container_id = data.container_id or known_id or engine_id_for(data.host, data.port)
    current = fleet.engine(container_id, utcnow())
    if current is not None and current.runtime != "external":
        raise ApiError(409, f"engine {container_id} is a {current.runtime} engine the provisioner manages")
    if known_id is not None and known_id != container_id:
        raise ApiError(409, f"{data.host}:{data.port} is already registered as engine {known_id}")
    event = EngineRegistered(
        container_id=container_id,
        host=data.host,
        port=data.port,
        container_name=data.container_name or (current.container_name if current else container_id),
        runtime="external",
        labels=data.labels,
    )
    return event, current is not None
