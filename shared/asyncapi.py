"""The NATS contract as an AsyncAPI 3.0 document, built from names.py and schemas.py.

For proxy authors in any language: every subject of DESIGN §3 and §10, its
payload schema (from the msgspec Structs), headers, examples, the micro queue
group and which role (DESIGN §11) may publish or subscribe it. The document is
written from the orchestrator's side: it *receives* events, stats and requests
(and replies), it *sends* the derived notifications. `aceorch contract` writes
it to asyncapi.yaml; the gateway serves it at /asyncapi.yaml.

Examples are Struct instances, so they are valid by construction; error
examples come from the functions that word those errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

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

ASYNCAPI_VERSION = "3.0.0"
DOCUMENT_VERSION = "0.1.0"
# nats.micro's default queue group: every replica of a service subscribes its endpoints in it
# (we never pass another), so each request is answered by exactly one replica.
MICRO_QUEUE_GROUP = "q"
NATS_BINDING_VERSION = "0.1.0"
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass(frozen=True)
class Channel:
    """A one-way subject: an event in ACE_EVENTS, a derived notification or stats (core NATS)."""

    key: str
    subject: str
    payload: type[Struct]
    kind: str  # "event" | "notification" | "stats"
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
    error_examples: tuple[Struct, ...]


# ---------------------------------------------------------------- examples (one story)

_AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
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
    status="dl", peers=14, speed_down=612, speed_up=48, downloaded=73400320, uploaded=4194304,
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


def _refusal(change) -> str:
    try:
        change()
    except ClaimRefused as exc:
        return str(exc)
    raise AssertionError("expected a refusal")


def _bad_request(kind: type[Struct], data: bytes) -> ErrorReply:
    return ErrorReply(error=_decode_error(kind, data), code=400)


def _claim(holder: str) -> Claim:
    return Claim(claim_id="0" * 32, purpose="clean", holder=holder, expires_at=_AT + timedelta(seconds=60))


_BUSY = _refusal(lambda: apply_claim(_RECORD, ClaimRequest(container_id=ENGINE_ID, purpose="clean", holder="janitor-1"),
                                     _CLAIM, _AT, 60))
_NOT_YOURS = _refusal(lambda: apply_release(
    msgspec.structs.replace(_RECORD, streams=[], state="cleaning", claim=_claim("janitor-2")), _CLAIM, _AT))


# ---------------------------------------------------------------- the contract

_EVENT_READERS = ("state-keeper",)
CHANNELS: tuple[Channel, ...] = (
    Channel(
        "streamStarted", names.STREAM_STARTED, StreamStarted, "event",
        "A proxy started a stream on an engine (after engine.select and the engine's getstream). "
        "Name the engine by `container_id` or by `host` and `port`; pass the selection's `reservation_id`.",
        ("proxy", "gateway", "operator"), _EVENT_READERS, _STARTED, f"stream.started.{STREAM_ID}",
    ),
    Channel(
        "streamEnded", names.STREAM_ENDED, StreamEnded, "event",
        "A stream ended (last viewer gone, failover, engine lost). Idempotent; an end before its start is kept.",
        ("proxy", "gateway", "operator"), _EVENT_READERS,
        StreamEnded(stream_id=STREAM_ID, container_id=ENGINE_ID, reason="viewers_left", ended_at=_AT + timedelta(minutes=42)),
        f"stream.ended.{STREAM_ID}",
    ),
    Channel(
        "engineHealth", names.ENGINE_HEALTH, EngineHealth, "event",
        "One probe of an engine. A `checked_at` ahead of the state-keeper's clock by more than MAX_CLOCK_SKEW_S is rejected.",
        ("prober",), ("state-keeper", "gateway"),
        EngineHealth(container_id=ENGINE_ID, ok=True, checked_at=_AT, latency_ms=12.5, version="3.2.3"),
        f"engine.health.{ENGINE_ID}.1767268800",
    ),
    Channel(
        "engineRegistered", names.ENGINE_REGISTERED, EngineRegistered, "event",
        "An engine exists and where to reach it. A registration older than the engine's removal is ignored.",
        ("provisioner", "gateway"), _EVENT_READERS,
        EngineRegistered(container_id=ENGINE_ID, host=_HOST, port=_PORT, container_name=ENGINE_ID, runtime="docker",
                         labels={"aceorch.pool": "default"}),
        f"engine.registered.{ENGINE_ID}.1",
    ),
    Channel(
        "engineRemoved", names.ENGINE_REMOVED, EngineRemoved, "event",
        "An engine is gone: its record is deleted and its streams end.",
        ("reaper", "provisioner", "gateway", "operator"), _EVENT_READERS,
        EngineRemoved(container_id=ENGINE_ID, reason="idle"),
        f"removed.{ENGINE_ID}.{_CLAIM}",
    ),
    Channel(
        "engineCleaned", names.ENGINE_CLEANED, EngineCleaned, "event",
        "The janitor cleaned an engine's cache (`cache_size_bytes` measured before the clean).",
        ("janitor",), _EVENT_READERS,
        EngineCleaned(container_id=ENGINE_ID, ok=True, cache_size_bytes=734003200, cleaned_at=_AT + timedelta(hours=2)),
        f"cleaned.{ENGINE_ID}.{_CLAIM}",
    ),
    Channel(
        "engineIdle", names.ENGINE_IDLE, EngineIdle, "notification",
        "An engine's stream count dropped to 0 (live reservations do not hold it back). "
        "The janitor hears it in queue group `janitor`. A missed one is caught by the next sweep.",
        ("state-keeper",), ("janitor",), EngineIdle(container_id=ENGINE_ID),
    ),
    Channel(
        "engineDemand", names.ENGINE_DEMAND, EngineDemand, "notification",
        "A selection found no capacity (`content_key` null: the reaper asks for a replacement). "
        "A missed one is caught by the next sweep.",
        ("state-keeper", "reaper"), ("provisioner",), EngineDemand(content_key=_CONTENT),
    ),
    Channel(
        "streamStats", names.STREAM_STATS, StreamStats, "stats",
        f"The latest playback figures of a started stream, every STAT_INTERVAL_S (core NATS: a lost one is "
        f"replaced by the next). Speeds in KiB/s, sizes in bytes. `proxy` is the replica's member id "
        f"(heartbeat `members.{names.PROXY_GROUP}.<id>` in {names.LEASES_BUCKET}).",
        ("proxy", "operator"), ("state-keeper",),
        StreamStats(stream_id=STREAM_ID, stats=_STATS, proxy="proxy-1"),
    ),
)

_KEEPER_ERRORS = (400, 500, 503)
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "engineSelect", names.ENGINE_SELECT, names.SERVICE_NAME, SelectRequest, SelectReply, ErrorReply, _KEEPER_ERRORS,
        "Choose an engine and reserve a slot on it (RESERVATION_TTL_S) until stream.started names the reservation. "
        "`{}` is a valid request. `503` with `retry_after_s`: no capacity (engine.demand was sent); ask again then. "
        "`exclude`: engines a failing-over proxy just left.",
        ("proxy", "gateway", "operator"),
        SelectRequest(content_key=_CONTENT, key_type="content_id", client="proxy-1", exclude=[]),
        SelectReply(engine=_RECORD, reservation_id=_RESERVATION, reservation_expires_at=_AT + timedelta(seconds=30),
                    shared=False),
        (ErrorReply(error="no_capacity", code=503, retry_after_s=2.0),
         _bad_request(SelectRequest, b'{"key_type": "torrent"}')),
    ),
    Endpoint(
        "engineList", names.ENGINE_LIST, names.SERVICE_NAME, ListRequest, EngineList, ErrorReply, _KEEPER_ERRORS,
        "Engine records, sorted by `container_id`, optionally filtered. `{}` lists all.",
        ("gateway", "operator"),
        ListRequest(state="active"), EngineList(engines=[_RECORD]),
        (_bad_request(ListRequest, b'{"state": "sleeping"}'),),
    ),
    Endpoint(
        "engineGet", names.ENGINE_GET, names.SERVICE_NAME, GetRequest, EngineRecord, ErrorReply, (400, 404, 500, 503),
        "One engine record; `404` when there is none.",
        ("proxy", "gateway", "operator"),
        GetRequest(container_id=ENGINE_ID), _RECORD,
        (ErrorReply(error="engine acestream-9 not found", code=404),),
    ),
    Endpoint(
        "engineClaim", names.ENGINE_CLAIM, names.SERVICE_NAME, ClaimRequest, ClaimReply, ErrorReply,
        (400, 404, 409, 500, 503),
        "Take an engine out of selection to clean or reap it (state `cleaning`/`draining`; lapses after CLAIM_TTL_S). "
        "`409` while it has streams or live reservations, is claimed by another holder, or is external.",
        ("janitor", "reaper", "gateway", "operator"),
        ClaimRequest(container_id=ENGINE_ID, purpose="clean", holder="janitor-1"), ClaimReply(claim_id=_CLAIM),
        (ErrorReply(error=_BUSY, code=409),),
    ),
    Endpoint(
        "engineRelease", names.ENGINE_RELEASE, names.SERVICE_NAME, ReleaseRequest, ReleaseReply, ErrorReply,
        (400, 404, 409, 500, 503),
        "Give a claim back (a lapsed one too); `409` for someone else's claim.",
        ("janitor", "reaper", "gateway", "operator"),
        ReleaseRequest(container_id=ENGINE_ID, claim_id=_CLAIM), ReleaseReply(ok=True),
        (ErrorReply(error=_NOT_YOURS, code=409),),
    ),
    Endpoint(
        "streamList", names.STREAM_LIST, names.SERVICE_NAME, StreamListRequest, StreamList, ErrorReply, _KEEPER_ERRORS,
        "Stream records, sorted by `stream_id`, optionally filtered.",
        ("gateway", "operator"),
        StreamListRequest(status="started", container_id=ENGINE_ID),
        StreamList(streams=[StreamRecord(
            stream_id=STREAM_ID, container_id=ENGINE_ID, content_key=_CONTENT, key_type="content_id",
            playback_session_id=_SESSION, stat_url=_STARTED.stat_url, command_url=_STARTED.command_url, is_live=True,
            started_at=_AT, proxy="proxy-1", stats=_STATS,
        )]),
        (_bad_request(StreamListRequest, b'{"status": "playing"}'),),
    ),
    Endpoint(
        "engineProvision", names.ENGINE_PROVISION, names.PROVISIONER_SERVICE, ProvisionRequest, ProvisionReply,
        ProvisionError, (400, 500, 503),
        "Start one engine now and answer once it is registered and answering (seconds: use a long timeout). "
        "`503` says why in `reason` and when to ask again in `retry_after_s`.",
        ("proxy", "gateway", "operator"),
        ProvisionRequest(),
        ProvisionReply(container_id="acestream-2", container_name="acestream-2", host=_HOST, port=6879,
                       host_port=6879, container_port=6878, runtime="docker"),
        (ProvisionError(error="the pool holds 8 engines (0 starting), MAX_REPLICAS is 8", code=503, reason="max_replicas_reached",
                        retry_after_s=5.0),),
    ),
)

DESCRIPTION = f"""\
The NATS contract of aceorch, an orchestrator for fleets of AceStream engines, for proxies and tools in any language.

Payloads are JSON (UTF-8); timestamps are ISO 8601 with a timezone. Decoding is strict: a wrong type, a missing
required field or an unknown enum value is rejected (requests get a `400` error reply; events are dropped and counted).
Requests also refuse unknown fields.

**Events** (`stream.*` but `stream.stats`, `engine.health|registered|removed|cleaned`) are captured by the JetStream
stream `{names.EVENTS_STREAM}`. Publish them with JetStream and a `{MSG_ID_HEADER}` header (an id unique to the event):
a retry with the same id within the stream's duplicate window is stored once. A plain core publish also lands.

**Requests** go to `nats.micro` services (`{names.SERVICE_NAME}`, `{names.PROVISIONER_SERVICE}`): `$SRV.PING`,
`$SRV.INFO` and `$SRV.STATS` work, every replica serves in queue group `{MICRO_QUEUE_GROUP}`. An empty request body
means `{{}}`. An error reply carries the headers `{ERROR_HEADER}` (a one-line description) and `{ERROR_CODE_HEADER}`
(the HTTP-like status as a string) and a JSON body with `error`, `code` and, where asking again may help,
`retry_after_s`.

**Roles** (`x-roles` on each channel, from DESIGN §11): who may publish on a subject and who subscribes to it
(least privilege; `operator` is the `aceorch` command line). A requester also needs to subscribe to its reply
inboxes (`_INBOX.>`, or a private inbox prefix).

The operations are the orchestrator's: it receives events, stats and requests and sends notifications.
"""


# ---------------------------------------------------------------- building the document


def _builtins(value: Struct) -> Any:
    return msgspec.to_builtins(value)


def _sent(value: Struct) -> dict[str, Any]:
    """An example of what a client sends: optional fields it leaves out are left out (null is accepted too)."""
    return {key: item for key, item in msgspec.to_builtins(value).items() if item is not None}


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)}


def _summarised(text: str) -> dict[str, str]:
    """AsyncAPI's short `summary` (the first sentence) and, when there is more, the whole as `description`."""
    first, stop, rest = text.partition(". ")
    return {"summary": first + "." if stop else text} | ({"description": text} if rest else {})


def _roles(publish: tuple[str, ...], subscribe: tuple[str, ...]) -> dict[str, list[str]]:
    return {"publish": list(publish), "subscribe": list(subscribe)}


def _schemas() -> dict[str, Any]:
    kinds: list[type[Struct]] = []
    for channel in CHANNELS:
        kinds.append(channel.payload)
    for endpoint in ENDPOINTS:
        kinds.extend((endpoint.request, endpoint.reply, endpoint.error))
    _, components = msgspec.json.schema_components(list(dict.fromkeys(kinds)), ref_template="#/components/schemas/{name}")
    for kind in (endpoint.request for endpoint in ENDPOINTS):
        components[kind.__name__]["additionalProperties"] = False  # forbid_unknown_fields
    return dict(sorted(components.items()))


def _event_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            MSG_ID_HEADER: {
                "type": "string",
                "description": "Unique per event (e.g. the subject and the stream or engine id); JetStream stores "
                "a message whose id it has seen within the duplicate window only once.",
            }
        },
    }


def _error_headers(codes: tuple[int, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [ERROR_HEADER, ERROR_CODE_HEADER],
        "properties": {
            ERROR_HEADER: {"type": "string", "maxLength": 200, "description": "The error's first line."},
            ERROR_CODE_HEADER: {"type": "string", "enum": [str(code) for code in codes]},
        },
    }


def _message(name: str, title: str, summary: str, payload: type[Struct], examples: list[dict[str, Any]],
             headers: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "title": title, **_summarised(summary), "contentType": "application/json"}
    if headers is not None:
        message["headers"] = headers
    message["payload"] = _ref("components", "schemas", payload.__name__)
    message["examples"] = examples
    return message


def document() -> dict[str, Any]:
    """The whole AsyncAPI document as JSON-compatible data (keys in a fixed order)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        sent_by_clients = channel.kind != "notification"
        payload = _sent(channel.example) if sent_by_clients else _builtins(channel.example)
        example: dict[str, Any] = {"name": channel.key, "payload": payload}
        if channel.kind == "event":
            example["headers"] = {MSG_ID_HEADER: channel.msg_id}
        messages[channel.key] = _message(
            channel.key, channel.subject, channel.summary, channel.payload, [example],
            _event_headers() if channel.kind == "event" else None,
        )
        where = {
            "event": f"Event, captured by the JetStream stream `{names.EVENTS_STREAM}`.",
            "notification": "Derived notification on core NATS (not stored).",
            "stats": "Core NATS (not stored).",
        }[channel.kind]
        channels[channel.key] = {
            "address": channel.subject,
            "title": channel.subject,
            "description": f"{where} Published by {', '.join(channel.publishers)}; "
            f"heard by {', '.join(channel.subscribers)}.",
            "messages": {channel.key: _ref("components", "messages", channel.key)},
            "x-roles": _roles(channel.publishers, channel.subscribers),
        }
        action = "send" if channel.kind == "notification" else "receive"
        operations[f"{action}{channel.key[0].upper()}{channel.key[1:]}"] = {
            "action": action,
            "channel": _ref("channels", channel.key),
            **_summarised(channel.summary),
            "messages": [_ref("channels", channel.key, "messages", channel.key)],
        }
    for endpoint in ENDPOINTS:
        request_key, reply_key, error_key = f"{endpoint.key}Request", f"{endpoint.key}Reply", f"{endpoint.key}Error"
        codes = ", ".join(str(code) for code in endpoint.codes)
        messages[request_key] = _message(
            request_key, f"{endpoint.subject} request", f"Request to {endpoint.subject}.", endpoint.request,
            [{"name": request_key, "payload": _sent(endpoint.request_example)}],
        )
        messages[reply_key] = _message(
            reply_key, f"{endpoint.subject} reply", f"Answer of {endpoint.subject}.", endpoint.reply,
            [{"name": reply_key, "payload": _builtins(endpoint.reply_example)}],
        )
        messages[error_key] = _message(
            error_key, f"{endpoint.subject} error", f"Error reply of {endpoint.subject} (codes {codes}).",
            endpoint.error,
            [
                {
                    "name": f"{error_key}{error.code}",
                    "headers": {ERROR_HEADER: error.error.splitlines()[0][:200], ERROR_CODE_HEADER: str(error.code)},
                    "payload": _builtins(error),
                }
                for error in endpoint.error_examples
            ],
            _error_headers(endpoint.codes),
        )
        channels[endpoint.key] = {
            "address": endpoint.subject,
            "title": endpoint.subject,
            "description": f"Request/reply, served by the `{endpoint.service}` micro service (queue group "
            f"`{MICRO_QUEUE_GROUP}`). Requested by {', '.join(endpoint.requesters)}.",
            "messages": {request_key: _ref("components", "messages", request_key)},
            "x-roles": _roles(endpoint.requesters, (endpoint.service,)),
        }
        channels[reply_key] = {
            "address": None,
            "title": f"{endpoint.subject} reply",
            "description": "The request's reply subject (an inbox the requester chose).",
            "messages": {
                reply_key: _ref("components", "messages", reply_key),
                error_key: _ref("components", "messages", error_key),
            },
        }
        operations[f"answer{endpoint.key[0].upper()}{endpoint.key[1:]}"] = {
            "action": "receive",
            "channel": _ref("channels", endpoint.key),
            **_summarised(endpoint.summary),
            "messages": [_ref("channels", endpoint.key, "messages", request_key)],
            "bindings": {"nats": {"queue": MICRO_QUEUE_GROUP, "bindingVersion": NATS_BINDING_VERSION}},
            "reply": {
                "channel": _ref("channels", reply_key),
                "messages": [
                    _ref("channels", reply_key, "messages", reply_key),
                    _ref("channels", reply_key, "messages", error_key),
                ],
            },
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": "aceorch NATS contract", "version": DOCUMENT_VERSION, "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Wherever NATS_URL points (`aceorch up` serves on localhost:4222).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": messages},
    }


def render() -> str:
    """The document as asyncapi.yaml holds it."""
    from shared.yaml_text import dumps

    return "# Generated by `aceorch contract` from shared/names.py and shared/schemas.py: do not edit.\n" + dumps(
        document()
    )
