"""The NATS contract as an AsyncAPI 3.0 document, built from shared/contract.py.

For proxy authors in any language: every subject, its payload schema (from the
msgspec Structs), headers, examples, the micro queue group and which role may
publish or subscribe it. The document is written from the orchestrator's side:
it *receives* events, stats and requests (and replies), it *sends* the derived
notifications. `aceorch contract` writes it to asyncapi.yaml; the gateway
serves it at /asyncapi.yaml.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared import names
from shared.contract import CHANNELS, ENDPOINTS, Channel, Endpoint
from shared.schemas import Struct
from shared.yaml_text import dumps

ASYNCAPI_VERSION = "3.0.0"
DOCUMENT_VERSION = "0.1.0"
# nats.micro's default queue group: every replica of a service subscribes its endpoints in it
# (we never pass another), so each request is answered by exactly one replica.
MICRO_QUEUE_GROUP = "q"
NATS_BINDING_VERSION = "0.1.0"
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
MSG_ID_HEADER = "Nats-Msg-Id"

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
    _, components = msgspec.json.schema_components(
        list(dict.fromkeys(kinds)), ref_template="#/components/schemas/{name}"
    )
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


def _message(
    name: str,
    title: str,
    summary: str,
    payload: type[Struct],
    examples: list[dict[str, Any]],
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "title": title, **_summarised(summary), "contentType": "application/json"}
    if headers is not None:
        message["headers"] = headers
    message["payload"] = _ref("components", "schemas", payload.__name__)
    message["examples"] = examples
    return message


def _camel(*words: str) -> str:
    return words[0] + "".join(word[0].upper() + word[1:] for word in words[1:])


_WHERE = {
    "event": f"Event, captured by the JetStream stream `{names.EVENTS_STREAM}`.",
    "notification": "Derived notification on core NATS (not stored).",
    "stats": "Core NATS (not stored).",
    "history": f"Stored in the JetStream stream `{names.HISTORY_STREAM}` (max age HISTORY_MAX_AGE_H), "
    "one message per HISTORY_INTERVAL_S with `Nats-Msg-Id: history.<epoch>`.",
}


def _one_way(channel: Channel, doc: dict[str, dict[str, Any]]) -> None:
    """An event, notification or stats subject: its message, channel and operation, added to `doc`."""
    key = channel.key
    client_sent = channel.kind not in ("notification", "history")
    example: dict[str, Any] = {
        "name": key,
        "payload": _sent(channel.example) if client_sent else _builtins(channel.example),
    }
    if channel.kind == "event":
        example["headers"] = {MSG_ID_HEADER: channel.msg_id}
    headers = _event_headers() if channel.kind == "event" else None
    doc["messages"][key] = _message(key, channel.subject, channel.summary, channel.payload, [example], headers)
    doc["channels"][key] = {
        "address": channel.subject,
        "title": channel.subject,
        "description": f"{_WHERE[channel.kind]} Published by {', '.join(channel.publishers)}; "
        f"heard by {', '.join(channel.subscribers)}.",
        "messages": {key: _ref("components", "messages", key)},
        "x-roles": _roles(channel.publishers, channel.subscribers),
    }
    action = "receive" if client_sent else "send"
    doc["operations"][_camel(action, key)] = {
        "action": action,
        "channel": _ref("channels", key),
        **_summarised(channel.summary),
        "messages": [_ref("channels", key, "messages", key)],
    }


def _error_message(endpoint: Endpoint, key: str) -> dict[str, Any]:
    codes = ", ".join(str(code) for code in endpoint.codes)
    examples = [
        {
            "name": f"{key}{error.code}",
            "headers": {ERROR_HEADER: error.error.splitlines()[0][:200], ERROR_CODE_HEADER: str(error.code)},
            "payload": _builtins(error),
        }
        for error in endpoint.error_examples
    ]
    summary = f"Error reply of {endpoint.subject} (codes {codes})."
    return _message(key, f"{endpoint.subject} error", summary, endpoint.error, examples, _error_headers(endpoint.codes))


def _request_reply(endpoint: Endpoint, doc: dict[str, dict[str, Any]]) -> None:
    """A micro endpoint: request, reply and error messages, its channel, the reply channel, the operation."""
    subject = endpoint.subject
    request, reply, error = (_camel(endpoint.key, part) for part in ("request", "reply", "error"))
    doc["messages"][request] = _message(
        request,
        f"{subject} request",
        f"Request to {subject}.",
        endpoint.request,
        [{"name": request, "payload": _sent(endpoint.request_example)}],
    )
    doc["messages"][reply] = _message(
        reply,
        f"{subject} reply",
        f"Answer of {subject}.",
        endpoint.reply,
        [{"name": reply, "payload": _builtins(endpoint.reply_example)}],
    )
    doc["messages"][error] = _error_message(endpoint, error)
    doc["channels"][endpoint.key] = {
        "address": subject,
        "title": subject,
        "description": f"Request/reply, served by the `{endpoint.service}` micro service (queue group "
        f"`{MICRO_QUEUE_GROUP}`). Requested by {', '.join(endpoint.requesters)}.",
        "messages": {request: _ref("components", "messages", request)},
        "x-roles": _roles(endpoint.requesters, (endpoint.service,)),
    }
    doc["channels"][reply] = {
        "address": None,
        "title": f"{subject} reply",
        "description": "The request's reply subject (an inbox the requester chose).",
        "messages": {name: _ref("components", "messages", name) for name in (reply, error)},
    }
    doc["operations"][_camel("answer", endpoint.key)] = {
        "action": "receive",
        "channel": _ref("channels", endpoint.key),
        **_summarised(endpoint.summary),
        "messages": [_ref("channels", endpoint.key, "messages", request)],
        "bindings": {"nats": {"queue": MICRO_QUEUE_GROUP, "bindingVersion": NATS_BINDING_VERSION}},
        "reply": {
            "channel": _ref("channels", reply),
            "messages": [_ref("channels", reply, "messages", name) for name in (reply, error)],
        },
    }


def document() -> dict[str, Any]:
    """The whole AsyncAPI document as JSON-compatible data (keys in a fixed order)."""
    doc: dict[str, dict[str, Any]] = {"channels": {}, "operations": {}, "messages": {}}
    for channel in CHANNELS:
        _one_way(channel, doc)
    for endpoint in ENDPOINTS:
        _request_reply(endpoint, doc)
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
        "channels": doc["channels"],
        "operations": doc["operations"],
        "components": {"schemas": _schemas(), "messages": doc["messages"]},
    }


def render() -> str:
    """The document as asyncapi.yaml holds it."""
    header = "# Generated by `aceorch contract` from shared/contract.py, names.py and schemas.py: do not edit.\n"
    return header + dumps(document())
