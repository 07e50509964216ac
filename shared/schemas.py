"""Strict msgspec types for every record, event, request and reply (DESIGN §3–4).

Decoders are built once per type. Timestamps must carry a timezone. A decode
error is answered in our words (`shared.decode_errors.describe_decode_error`:
the field's path and what it expects), not in msgspec's, which change between
releases.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeAlias, TypeVar

import msgspec

# KV keys must be valid NATS subject tokens; ids become keys, so they share the rule.
Key: TypeAlias = Annotated[str, msgspec.Meta(pattern=r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$", max_length=255)]
Text: TypeAlias = Annotated[str, msgspec.Meta(max_length=4096)]
ShortText: TypeAlias = Annotated[str, msgspec.Meta(max_length=255)]
Port: TypeAlias = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Timestamp: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]
Labels: TypeAlias = Annotated[dict[ShortText, Text], msgspec.Meta(max_length=64)]

KeyType: TypeAlias = Literal["content_id", "infohash", "url", "magnet"]
HealthStatus: TypeAlias = Literal["healthy", "unhealthy", "unknown"]
EngineState: TypeAlias = Literal["active", "draining", "cleaning"]
Runtime: TypeAlias = Literal["docker", "local", "external"]
ClaimPurpose: TypeAlias = Literal["clean", "reap"]
StreamStatus: TypeAlias = Literal["started", "ended"]
Count: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
# An engine's `livepos` object (live position: first/last/pos/buffer_pieces ...), passed through as reported.
LivePos: TypeAlias = Annotated[dict[ShortText, int | float | ShortText | None], msgspec.Meta(max_length=32)]


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base for all wire types: immutable, keyword-only.

    msgspec passes `frozen` on to subclasses; type checkers read it per class (PEP 681), so each
    subclass repeats `frozen=True`.
    """


# ---------------------------------------------------------------- records


class Claim(Struct, frozen=True):
    claim_id: str
    purpose: ClaimPurpose
    holder: str
    expires_at: Timestamp


class EngineRecord(Struct, frozen=True):
    container_id: Key
    container_name: str
    host: str
    port: Port
    runtime: Runtime = "external"
    labels: dict[str, str] = {}
    state: EngineState = "active"
    health_status: HealthStatus = "unknown"
    last_health_check: Timestamp | None = None
    health_since: Timestamp | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_error: str | None = None
    last_stream_usage: Timestamp | None = None
    idle_since: Timestamp | None = None
    streams: list[str] = []
    reservations: dict[str, Timestamp] = {}
    claim: Claim | None = None
    last_cache_cleanup: Timestamp | None = None
    cache_size_bytes: int | None = None
    created_at: Timestamp | None = None
    version: str | None = None
    # Whether a VPN forwards a public port to the engine (more peers); none does yet. Proxies written
    # for the reference orchestrator read it from /engines.
    forwarded: bool = False
    # Sequences in ACE_EVENTS of the last registration and health report applied: the order of
    # events is the state-keeper's to keep, not the reporters' clocks' (a prober's 2099 stamp
    # would otherwise outrank every later report).
    registered_seq: int = 0
    health_seq: int = 0
    # The host whose agents (provisioner, janitor, reaper) look after it (HOST_ID); None: not recorded.
    host_id: str | None = None


class EngineRemoval(Struct, frozen=True):
    """A removed engine's tombstone (key `removed.<container_id>` in ace_leases, kept STREAM_TTL_S):
    a registration older than the removal (by event sequence) must not bring the engine back."""

    container_id: Key
    removed_seq: int
    removed_at: Timestamp
    reason: str | None = None


class PlaybackStats(Struct, frozen=True):
    """The latest figures of one playback session, from the engine's stat URL (DESIGN §10).
    Speeds in KiB/s and sizes in bytes, as the engine reports them."""

    status: ShortText | None = None
    peers: Count | None = None
    speed_down: Count | None = None
    speed_up: Count | None = None
    downloaded: Count | None = None
    uploaded: Count | None = None
    livepos: LivePos | None = None
    reported_at: Timestamp | None = None


class StreamRecord(Struct, frozen=True):
    stream_id: Key
    container_id: str | None = None
    content_key: str | None = None
    key_type: KeyType | None = None
    playback_session_id: str | None = None
    stat_url: str | None = None
    command_url: str | None = None
    is_live: bool | None = None
    status: StreamStatus = "started"
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    reason: str | None = None
    proxy: str | None = None  # the reporting proxy replica's member id (DESIGN §10), when it has one
    stats: PlaybackStats | None = None
    viewers: int | None = None  # from the proxy's latest stream.stats
    relayed_bytes: int | None = None  # from the proxy's latest stream.stats


# ---------------------------------------------------------------- events


class StreamStarted(Struct, frozen=True):
    stream_id: Key
    container_id: Key | None = None
    host: ShortText | None = None
    port: Port | None = None
    content_key: Text | None = None
    key_type: KeyType | None = None
    playback_session_id: Text | None = None
    stat_url: Text | None = None
    command_url: Text | None = None
    is_live: bool | None = None
    reservation_id: ShortText | None = None
    started_at: Timestamp | None = None
    proxy: ShortText | None = None  # member id in `members.proxy.*`: its streams end when it is gone


class StreamEnded(Struct, frozen=True):
    stream_id: Key
    container_id: Key | None = None
    reason: Text | None = None
    ended_at: Timestamp | None = None


class EngineHealth(Struct, frozen=True):
    container_id: Key
    ok: bool
    checked_at: Timestamp
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    error: Text | None = None
    version: ShortText | None = None


class EngineRegistered(Struct, frozen=True):
    container_id: Key
    host: ShortText
    port: Port
    container_name: ShortText | None = None
    runtime: Runtime = "external"
    labels: Labels = {}
    host_id: ShortText | None = None


class HostStarts(Struct, frozen=True):
    """A provisioner's engines created but maybe not in everyone's records yet (`starting.<host>.<member>`
    in ace_leases): what the scaling lock's next holder on another host cannot see in its own runtime."""

    host_id: ShortText
    written_at: float  # the writer's wall clock (seconds since the epoch): an entry a TTL old is ignored
    container_ids: Annotated[list[Key], msgspec.Meta(max_length=1024)] = []
    unnamed: Count = 0  # creations still under way: no id yet
    backoff_until: float | None = None  # its starts keep failing: place nothing on its host before then (wall clock)


class EngineRemoved(Struct, frozen=True):
    container_id: Key
    reason: Text | None = None


class EngineCleaned(Struct, frozen=True):
    container_id: Key
    ok: bool
    cache_size_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    cleaned_at: Timestamp | None = None
    error: Text | None = None


Event: TypeAlias = StreamStarted | StreamEnded | EngineHealth | EngineRegistered | EngineRemoved | EngineCleaned


class StreamStats(Struct, frozen=True):
    """`stream.stats` (core NATS, not in ACE_EVENTS): the latest figures of a started stream."""

    stream_id: Key
    stats: PlaybackStats
    proxy: ShortText | None = None
    viewers: Count | None = None  # the proxy's viewers of this stream now
    relayed_bytes: Count | None = None  # bytes the proxy sent its viewers since the stream started


class EngineIdle(Struct, frozen=True):
    container_id: Key


class EngineDemand(Struct, frozen=True):
    content_key: str | None = None


# ---------------------------------------------------------------- history (ACE_HISTORY, the gateway's)

Rate: TypeAlias = Annotated[float, msgspec.Meta(ge=0)]


class HistorySample(Struct, frozen=True):
    """The fleet at one HISTORY_INTERVAL_S boundary (`epoch` = at // interval), written once across
    gateway replicas. Rates are per second since the writer's previous reading; `None` when unknown
    (no previous reading, no probe seen in the interval). Unknown fields are ignored, not refused:
    during a rolling upgrade an older gateway reads the samples a newer one wrote."""

    epoch: int
    at: Timestamp
    interval_s: Annotated[float, msgspec.Meta(gt=0)]
    healthy: Count = 0
    unhealthy: Count = 0
    unknown: Count = 0
    active: Count = 0
    draining: Count = 0
    cleaning: Count = 0
    streams: Count = 0  # started stream records (one per playback session a proxy or client reported)
    channels: Count = 0  # distinct content among them
    peers: Count = 0  # sum of the engines' reported peers over started streams
    viewers: Count = 0  # sum of the proxies' viewers over started streams
    relayed_bytes: Count = 0  # sum of what proxies sent viewers of the started streams
    speed_down_kib: Count = 0  # sum of reported download speeds, KiB/s
    downloaded_bytes: Count = 0  # sum of `downloaded` over started streams (what the engines fetched for them)
    selections_per_s: Rate | None = None  # engine.select answered with an engine
    no_capacity_per_s: Rate | None = None  # engine.select refused for capacity (HTTP 503)
    probes: Count = 0  # engine.health observations with a latency in the interval
    probe_p50_ms: Rate | None = None
    probe_p99_ms: Rate | None = None
    cache_cleaned_bytes: Count = 0  # bytes removed by the last clean of every current engine


class HistoryPoint(Struct, frozen=True):
    """One point of a downsampled series: the mean over `samples` samples from `at` on
    (probe p99 and health problems: the worst of them, so a spike is not averaged away)."""

    at: Timestamp
    samples: int
    healthy: float
    unhealthy: float
    unknown: float
    streams: float
    channels: float
    peers: float
    viewers: float
    relayed_bytes: float
    speed_down_kib: float
    selections_per_s: float | None
    no_capacity_per_s: float | None
    probe_p50_ms: float | None
    probe_p99_ms: float | None
    cache_cleaned_bytes: float


class HistoryReply(Struct, frozen=True):
    range: str
    interval_s: float  # the sampling interval
    step_s: float  # the width of one point
    points: list[HistoryPoint]


class Probe(Struct, frozen=True):
    """One health probe of one engine, for its sparkline (`GET /api/engines/{id}/probes`)."""

    at: Timestamp
    latency_ms: float | None
    ok: bool


class FleetEvent(Struct, frozen=True):
    """One thing that happened, said in words (`text`), newest first in `GET /api/events`."""

    id: str
    at: Timestamp
    kind: str
    text: str
    container_id: str | None = None
    stream_id: str | None = None
    level: Literal["info", "warning", "error"] = "info"


# ---------------------------------------------------------------- requests and replies


class SelectRequest(Struct, frozen=True, forbid_unknown_fields=True):
    content_key: Text | None = None
    key_type: KeyType | None = None
    client: ShortText | None = None
    # Engines a failing-over proxy just left: never offered, even when they share the content.
    exclude: Annotated[list[Key], msgspec.Meta(max_length=64)] = []


class ListRequest(Struct, frozen=True, forbid_unknown_fields=True):
    health_status: HealthStatus | None = None
    state: EngineState | None = None


class GetRequest(Struct, frozen=True, forbid_unknown_fields=True):
    container_id: Key


class ClaimRequest(Struct, frozen=True, forbid_unknown_fields=True):
    container_id: Key
    purpose: ClaimPurpose
    holder: ShortText


class ReleaseRequest(Struct, frozen=True, forbid_unknown_fields=True):
    container_id: Key
    claim_id: ShortText


class StreamListRequest(Struct, frozen=True, forbid_unknown_fields=True):
    status: StreamStatus | None = None
    container_id: Key | None = None


class SelectReply(Struct, frozen=True):
    engine: EngineRecord
    reservation_id: str
    reservation_expires_at: Timestamp
    shared: bool


class EngineList(Struct, frozen=True):
    engines: list[EngineRecord]


class ClaimReply(Struct, frozen=True):
    claim_id: str


class ReleaseReply(Struct, frozen=True):
    ok: bool


class StreamList(Struct, frozen=True):
    streams: list[StreamRecord]


class ErrorReply(Struct, frozen=True, omit_defaults=True):
    error: str
    code: int
    retry_after_s: float | None = None


# -- engine.provision (the provisioner's micro service; the reference's POST /provision/acestream)

ProvisionRefusal: TypeAlias = Literal[
    "max_replicas_reached",  # the pool is at MAX_REPLICAS: wait for a slot or an engine to go
    "start_failed",  # the engine did not start or answer within ENGINE_START_TIMEOUT_S
    "backoff",  # starts failed lately: the next one waits (start_backoff_s)
    "busy",  # another replica held the scaling lock for too long, or too many requests are pending
    "bad_request",  # the request does not decode
    "internal",  # our bug (logged by the provisioner)
]


class ProvisionRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """The reference's body; accepted for compatibility: engines get the pool's labels and settings."""

    labels: Labels = {}
    env: Labels = {}


class ProvisionReply(Struct, frozen=True):
    """A new engine, registered and answering."""

    container_id: Key
    container_name: str
    host: str  # where the orchestrator reaches it (as in its record)
    port: Port
    host_port: Port  # where it answers on the engine's host
    container_port: Port  # where it listens inside its container
    runtime: Runtime


class ProvisionError(Struct, frozen=True, omit_defaults=True):
    """An `engine.provision` error body: ErrorReply's fields plus why (`reason`)."""

    error: str
    code: int
    reason: ProvisionRefusal
    retry_after_s: float | None = None


# ---------------------------------------------------------------- codecs

encoder = msgspec.json.Encoder()
encode = encoder.encode


S = TypeVar("S", bound=msgspec.Struct)


def decoder(kind: type[S]) -> Callable[[bytes], S]:
    """A strict decode function for one type, built once."""
    return msgspec.json.Decoder(kind).decode


decode_engine = decoder(EngineRecord)
decode_stream = decoder(StreamRecord)
decode_removal = decoder(EngineRemoval)
decode_sample = decoder(HistorySample)

EVENT_TYPES: dict[str, type[Event]] = {
    "stream.started": StreamStarted,
    "stream.ended": StreamEnded,
    "engine.health": EngineHealth,
    "engine.registered": EngineRegistered,
    "engine.removed": EngineRemoved,
    "engine.cleaned": EngineCleaned,
}
EVENT_DECODERS = {subject: decoder(kind) for subject, kind in EVENT_TYPES.items()}


def utcnow() -> datetime:
    """The only clock the services read; pure code gets `now` passed in."""
    return datetime.now(UTC)
