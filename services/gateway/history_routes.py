"""`GET /api/history`, `GET /api/events` and an engine's probes: the operator's view over time (issue 14)."""

from __future__ import annotations

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from services.gateway.events import EventLog
from services.gateway.fleet import ApiError
from services.gateway.history import History
from services.gateway.routes import errors
from shared.policy.history import RangeError, parse_range
from shared.schemas import FleetEvent, HistoryReply, Probe


def history_routes(history: History, events: EventLog) -> list[HTTPRouteHandler]:
    @get("/api/history", tags=["history"], responses=errors(400))
    async def fleet_history(
        span: str = Parameter(query="range", default="1h", description="How far back: `1h`, `6h` or `24h`"),
    ) -> HistoryReply:
        """The fleet over time, one point per step (at most 360): engines by health, streams, peers,
        selections/s, probe latency p50/p99, cache cleaned. Sampled every HISTORY_INTERVAL_S, kept
        HISTORY_MAX_AGE_H; a step without samples is left out."""
        try:
            range_s = parse_range(span)
        except RangeError as exc:
            raise ApiError(400, str(exc)) from None
        step, points = history.series(range_s)
        return HistoryReply(range=span, interval_s=history.interval_s, step_s=step, points=points)

    @get("/api/events", tags=["history"], responses=errors(400))
    async def fleet_events(
        limit: int = Parameter(default=100, ge=1, le=1000, description="At most this many, newest first"),
        container_id: str | None = Parameter(default=None, description="Only this engine's"),
    ) -> list[FleetEvent]:
        """What happened, newest first, in words: health flips with the error, cleans with sizes,
        registrations, removals (reaps, replacements), stream starts, ends and failovers, demand."""
        return events.newest(limit, container_id)

    @get("/api/engines/{container_id:str}/probes", tags=["history"])
    async def engine_probes(container_id: str) -> list[Probe]:
        """This engine's recent health probes (`at`, `latency_ms`, `ok`), oldest first (its sparkline);
        the ones this gateway saw, the last 60."""
        return events.probes_of(container_id)

    return [fleet_history, fleet_events, engine_probes]
