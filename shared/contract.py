"""What the NATS contract is made of, as data: every subject of DESIGN §3 and §10, its
payload type, who publishes and who subscribes (DESIGN §11), and one example story.

`shared.asyncapi` writes it out as an AsyncAPI document. Examples are Struct
instances, so they are valid by construction; the 400 and 409 examples are
worded by the functions that word those errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from shared import names
from shared.decode_errors import describe_decode_error
from shared.policy.events import ClaimRefused, apply_claim, apply_release
from shared.schemas import (
    Claim,
    ClaimReply,
    ClaimRequest,
    EngineCleaned,
    EngineDemand,
    EngineHealth,
    EngineIdle,
    EngineList,
    EngineRecord,
    EngineRegistered,
    EngineRemoved,
    ErrorReply,
    GetRequest,
    HistorySample,
    ListRequest,
    PlaybackStats,
    ProvisionError,
    ProvisionReply,
    ProvisionRequest,
    ReleaseReply,
    ReleaseRequest,
    SelectReply,
    SelectRequest,
    StreamEnded,
    StreamList,
    StreamListRequest,
    StreamRecord,
    StreamStarted,
    StreamStats,
    Struct,
    decoder,
)


@dataclass(frozen=True)
class Channel:
    """A one-way subject: an event in ACE_EVENTS, a derived notification or stats (core NATS)."""

    key: str
    subject: str
    payload: type[Struct]
    kind: str  # "event" | "notification" | "stats" | "history"
    summary: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    example: Struct
    msg_id: str | None = None  # the example's Nats-Msg-Id (events only)


@dataclass(frozen=True)
class Endpoint:
    """A request/reply subject of a micro service."""

    key: str
    subject: str
    service: str
    request: type[Struct]
    reply: type[Struct]
    error: type[Struct]
    codes: tuple[int, ...]
    summary: str
    requesters: tuple[str, ...]
    request_example: Struct
    reply_example: Struct
    error_examples: tuple[ErrorReply | ProvisionError, ...]


# ---------------------------------------------------------------- examples (one story)

_AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ENGINE_ID = "acestream-1"
_HOST, _PORT = "127.0.0.1", 6878
_CONTENT = "94c2fd8fb9bc8f2fc71a2cbe9d4b866f227a0209"
_INFOHASH = "e6f6c3b7b8a9c1d2e3f405162738495a6b7c8d9e"
_SESSION = "1f0e8a3c2b7d4e6f"
STREAM_ID = "proxy-1.94c2fd8f.1"
_RESERVATION = "9d1f3a7e5b2c4d6e1"
_CLAIM = "3b9d0c5e7f214a68b1c2d3e4f5a6b7c8"

_RECORD = EngineRecord(
    container_id=ENGINE_ID,
    container_name=ENGINE_ID,
    host=_HOST,
    port=_PORT,
    runtime="docker",
    labels={"aceorch.pool": "default"},
    health_status="healthy",
    last_health_check=_AT,
    health_since=_AT - timedelta(minutes=5),
    consecutive_successes=12,
    last_stream_usage=_AT,
    streams=[STREAM_ID],
    created_at=_AT - timedelta(hours=1),
    version="3.2.3",
)
_STATS = PlaybackStats(
    status="dl",
    peers=14,
    speed_down=612,
    speed_up=48,
    downloaded=73400320,
    uploaded=4194304,
    livepos={"first": 1767268800, "last": 1767269400, "pos": 1767269390, "buffer_pieces": 15},
    reported_at=_AT + timedelta(seconds=30),
)
_STARTED = StreamStarted(
    stream_id=STREAM_ID,
    container_id=ENGINE_ID,
    content_key=_CONTENT,
    key_type="content_id",
    playback_session_id=_SESSION,
    stat_url=f"http://{_HOST}:{_PORT}/ace/stat/{_INFOHASH}/{_SESSION}",
    command_url=f"http://{_HOST}:{_PORT}/ace/cmd/{_INFOHASH}/{_SESSION}",
    is_live=True,
    reservation_id=_RESERVATION,
    started_at=_AT,
    proxy="proxy-1",
)


def _decode_error(kind: type[Struct], data: bytes) -> str:
    """The 400 message the endpoints give for `data` (they word it with describe_decode_error)."""
    try:
        decoder(kind)(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return describe_decode_error(exc, data, kind, "request")
    raise AssertionError(f"{data!r} decodes as {kind.__name__}")


def _refusal(change: Callable[[], object]) -> str:
    try:
        change()
    except ClaimRefused as exc:
        return str(exc)
    raise AssertionError("expected a refusal")


def _bad_request(kind: type[Struct], data: bytes) -> ErrorReply:
    return ErrorReply(error=_decode_error(kind, data), code=400)


def _claim(holder: str) -> Claim:
    return Claim(claim_id="0" * 32, purpose="clean", holder=holder, expires_at=_AT + timedelta(seconds=60))


_BUSY = _refusal(
    lambda: apply_claim(
        _RECORD, ClaimRequest(container_id=ENGINE_ID, purpose="clean", holder="janitor-1"), _CLAIM, _AT, 60
    )
)
_NOT_YOURS = _refusal(
    lambda: apply_release(
        msgspec.structs.replace(_RECORD, streams=[], state="cleaning", claim=_claim("janitor-2")), _CLAIM, _AT
    )
)


# ---------------------------------------------------------------- the contract

_EVENT_READERS = ("state-keeper",)
CHANNELS: tuple[Channel, ...] = (
    Channel(
        "streamStarted",
        names.STREAM_STARTED,
        StreamStarted,
        "event",
        "A proxy started a stream on an engine (after engine.select and the engine's getstream). "
        "Name the engine by `container_id` or by `host` and `port`; pass the selection's `reservation_id`.",
        ("proxy", "gateway", "operator"),
        _EVENT_READERS,
        _STARTED,
        f"stream.started.{STREAM_ID}",
    ),
    Channel(
        "streamEnded",
        names.STREAM_ENDED,
        StreamEnded,
        "event",
        "A stream ended (last viewer gone, failover, engine lost; the state-keeper ends the streams of a lost proxy "
        "or a gone session). Idempotent; an end before its start is kept.",
        ("proxy", "gateway", "operator", "state-keeper"),
        _EVENT_READERS,
        StreamEnded(
            stream_id=STREAM_ID, container_id=ENGINE_ID, reason="viewers_left", ended_at=_AT + timedelta(minutes=42)
        ),
        f"stream.ended.{STREAM_ID}",
    ),
    Channel(
        "engineHealth",
        names.ENGINE_HEALTH,
        EngineHealth,
        "event",
        "One probe of an engine. A `checked_at` ahead of the state-keeper's clock by more than MAX_CLOCK_SKEW_S is rejected.",
        ("prober",),
        ("state-keeper", "gateway"),
        EngineHealth(container_id=ENGINE_ID, ok=True, checked_at=_AT, latency_ms=12.5, version="3.2.3"),
        f"engine.health.{ENGINE_ID}.1767268800",
    ),
    Channel(
        "engineRegistered",
        names.ENGINE_REGISTERED,
        EngineRegistered,
        "event",
        "An engine exists and where to reach it. A registration older than the engine's removal is ignored.",
        ("provisioner", "gateway"),
        _EVENT_READERS,
        EngineRegistered(
            container_id=ENGINE_ID,
            host=_HOST,
            port=_PORT,
            container_name=ENGINE_ID,
            runtime="docker",
            labels={"aceorch.pool": "default"},
        ),
        f"engine.registered.{ENGINE_ID}.1",
    ),
    Channel(
        "engineRemoved",
        names.ENGINE_REMOVED,
        EngineRemoved,
        "event",
        "An engine is gone: its record is deleted and its streams end.",
        ("reaper", "provisioner", "gateway", "operator"),
        _EVENT_READERS,
        EngineRemoved(container_id=ENGINE_ID, reason="idle"),
        f"removed.{ENGINE_ID}.{_CLAIM}",
    ),
    Channel(
        "engineCleaned",
        names.ENGINE_CLEANED,
        EngineCleaned,
        "event",
        "The janitor cleaned an engine's cache (`cache_size_bytes` measured before the clean).",
        ("janitor",),
        _EVENT_READERS,
        EngineCleaned(container_id=ENGINE_ID, ok=True, cache_size_bytes=734003200, cleaned_at=_AT + timedelta(hours=2)),
        f"cleaned.{ENGINE_ID}.{_CLAIM}",
    ),
    Channel(
        "engineIdle",
        names.ENGINE_IDLE,
        EngineIdle,
        "notification",
        "An engine's stream count dropped to 0 (live reservations do not hold it back). "
        "The janitors hear it in one queue group per host, `janitor.<HOST_ID>`. A missed one is caught by the next sweep.",
        ("state-keeper",),
        ("janitor",),
        EngineIdle(container_id=ENGINE_ID),
    ),
    Channel(
        "engineDemand",
        names.ENGINE_DEMAND,
        EngineDemand,
        "notification",
        "A selection found no capacity (`content_key` null: the reaper asks for a replacement). "
        "A missed one is caught by the next sweep. The gateway lists them among its events.",
        ("state-keeper", "reaper"),
        ("provisioner", "gateway"),
        EngineDemand(content_key=_CONTENT),
    ),
    Channel(
        "streamStats",
        names.STREAM_STATS,
        StreamStats,
        "stats",
        f"The latest playback figures of a started stream, every STAT_INTERVAL_S (core NATS: a lost one is "
        f"replaced by the next). Speeds in KiB/s, sizes in bytes. `proxy` is the replica's member id "
        f"(heartbeat `members.{names.PROXY_GROUP}.<id>` in {names.LEASES_BUCKET}).",
        ("proxy", "operator"),
        ("state-keeper",),
        StreamStats(stream_id=STREAM_ID, stats=_STATS, proxy="proxy-1"),
    ),
    Channel(
        "historySample",
        names.HISTORY_SAMPLE,
        HistorySample,
        "history",
        "The fleet at one HISTORY_INTERVAL_S boundary: engines by health and state, streams, peers, "
        "selections/s, probe latency p50/p99, cache cleaned. Written by the one gateway replica that won the "
        "interval's epoch marker; every gateway follows the stream for `GET /api/history` and `/api/live`.",
        ("gateway",),
        ("gateway",),
        HistorySample(
            epoch=177_000_000,
            at=datetime(2026, 2, 2, 2, 40, tzinfo=UTC),
            interval_s=10.0,
            healthy=3,
            unhealthy=1,
            active=4,
            streams=2,
            channels=1,
            peers=17,
            speed_down_kib=640,
            selections_per_s=0.2,
            no_capacity_per_s=0.0,
            probes=8,
            probe_p50_ms=4.1,
            probe_p99_ms=5003.2,
            cache_cleaned_bytes=734003200,
        ),
    ),
)

_KEEPER_ERRORS = (400, 500, 503)
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "engineSelect",
        names.ENGINE_SELECT,
        names.SERVICE_NAME,
        SelectRequest,
        SelectReply,
        ErrorReply,
        _KEEPER_ERRORS,
        "Choose an engine and reserve a slot on it (RESERVATION_TTL_S) until stream.started names the reservation. "
        "`{}` is a valid request. `503` with `retry_after_s`: no capacity (engine.demand was sent); ask again then. "
        "`exclude`: engines a failing-over proxy just left.",
        ("proxy", "gateway", "operator"),
        SelectRequest(content_key=_CONTENT, key_type="content_id", client="proxy-1", exclude=[]),
        SelectReply(
            engine=_RECORD,
            reservation_id=_RESERVATION,
            reservation_expires_at=_AT + timedelta(seconds=30),
            shared=False,
        ),
        (
            ErrorReply(error="no_capacity", code=503, retry_after_s=2.0),
            _bad_request(SelectRequest, b'{"key_type": "torrent"}'),
        ),
    ),
    Endpoint(
        "engineList",
        names.ENGINE_LIST,
        names.SERVICE_NAME,
        ListRequest,
        EngineList,
        ErrorReply,
        _KEEPER_ERRORS,
        "Engine records, sorted by `container_id`, optionally filtered. `{}` lists all.",
        ("gateway", "operator", "reaper"),
        ListRequest(state="active"),
        EngineList(engines=[_RECORD]),
        (_bad_request(ListRequest, b'{"state": "sleeping"}'),),
    ),
    Endpoint(
        "engineGet",
        names.ENGINE_GET,
        names.SERVICE_NAME,
        GetRequest,
        EngineRecord,
        ErrorReply,
        (400, 404, 500, 503),
        "One engine record; `404` when there is none.",
        ("proxy", "gateway", "operator", "reaper"),
        GetRequest(container_id=ENGINE_ID),
        _RECORD,
        (ErrorReply(error="engine acestream-9 not found", code=404),),
    ),
    Endpoint(
        "engineClaim",
        names.ENGINE_CLAIM,
        names.SERVICE_NAME,
        ClaimRequest,
        ClaimReply,
        ErrorReply,
        (400, 404, 409, 500, 503),
        "Take an engine out of selection to clean or reap it (state `cleaning`/`draining`; lapses after CLAIM_TTL_S). "
        "`409` while it has streams or live reservations, is claimed by another holder, or is external.",
        ("janitor", "reaper", "gateway", "operator"),
        ClaimRequest(container_id=ENGINE_ID, purpose="clean", holder="janitor-1"),
        ClaimReply(claim_id=_CLAIM),
        (ErrorReply(error=_BUSY, code=409),),
    ),
    Endpoint(
        "engineRelease",
        names.ENGINE_RELEASE,
        names.SERVICE_NAME,
        ReleaseRequest,
        ReleaseReply,
        ErrorReply,
        (400, 404, 409, 500, 503),
        "Give a claim back (a lapsed one too); `409` for someone else's claim.",
        ("janitor", "reaper", "gateway", "operator"),
        ReleaseRequest(container_id=ENGINE_ID, claim_id=_CLAIM),
        ReleaseReply(ok=True),
        (ErrorReply(error=_NOT_YOURS, code=409),),
    ),
    Endpoint(
        "streamList",
        names.STREAM_LIST,
        names.SERVICE_NAME,
        StreamListRequest,
        StreamList,
        ErrorReply,
        _KEEPER_ERRORS,
        "Stream records, sorted by `stream_id`, optionally filtered.",
        ("gateway", "operator"),
        StreamListRequest(status="started", container_id=ENGINE_ID),
        StreamList(
            streams=[
                StreamRecord(
                    stream_id=STREAM_ID,
                    container_id=ENGINE_ID,
                    content_key=_CONTENT,
                    key_type="content_id",
                    playback_session_id=_SESSION,
                    stat_url=_STARTED.stat_url,
                    command_url=_STARTED.command_url,
                    is_live=True,
                    started_at=_AT,
                    proxy="proxy-1",
                    stats=_STATS,
                )
            ]
        ),
        (_bad_request(StreamListRequest, b'{"status": "playing"}'),),
    ),
    Endpoint(
        "engineProvision",
        names.ENGINE_PROVISION,
        names.PROVISIONER_SERVICE,
        ProvisionRequest,
        ProvisionReply,
        ProvisionError,
        (400, 500, 503),
        "Start one engine now and answer once it is registered and answering (seconds: use a long timeout). "
        "`503` says why in `reason` and when to ask again in `retry_after_s`.",
        ("proxy", "gateway", "operator"),
        ProvisionRequest(),
        ProvisionReply(
            container_id="acestream-2",
            container_name="acestream-2",
            host=_HOST,
            port=6879,
            host_port=6879,
            container_port=6878,
            runtime="docker",
        ),
        (
            ProvisionError(
                error="the pool holds 8 engines (0 starting), MAX_REPLICAS is 8",
                code=503,
                reason="max_replicas_reached",
                retry_after_s=5.0,
            ),
        ),
    ),
)
