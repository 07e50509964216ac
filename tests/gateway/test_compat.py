"""shared.compat: proxy payloads (ours and the reference orchestrator's) → events. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import pytest

from shared.compat import (
    CompatError,
    StreamEndedBody,
    StreamStartedBody,
    UnknownEngine,
    UnknownStream,
    engine_id_for,
    stream_ended_event,
    stream_started_event,
    to_key,
)
from shared.decode_errors import describe_decode_error
from shared.schemas import Key, StreamEnded, StreamStarted

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
ACEXY_STARTED = {
    "container_id": "acexy-proxy",
    "engine": {"host": "10.0.0.5", "port": 6878},
    "stream": {"key_type": "content_id", "key": "94c2fd8f"},
    "session": {
        "playback_session_id": "ps-1",
        "stat_url": "http://e/ace/stat/x/ps-1",
        "command_url": "http://e/ace/cmd/x/ps-1",
        "is_live": 1,
        "something_new": True,
    },
    "labels": {"stream_id": "94c2fd8f|client-1"},
}
decode_started = msgspec.json.Decoder(StreamStartedBody).decode
decode_ended = msgspec.json.Decoder(StreamEndedBody).decode
is_key = msgspec.json.Decoder(Key).decode


@dataclass
class Directory:
    engines: dict[tuple[str, int], str] = field(default_factory=lambda: {("10.0.0.5", 6878): "acestream-1"})
    newest: dict[str, str] = field(default_factory=dict)

    def has_engine(self, container_id: str) -> bool:
        return container_id in self.engines.values()

    def engine_at(self, host: str, port: int) -> str | None:
        return self.engines.get((host, port))

    def latest_stream_on(self, container_id: str) -> str | None:
        return self.newest.get(container_id)


def started(payload: dict, directory: Directory | None = None) -> StreamStarted:
    body = decode_started(msgspec.json.encode(payload))
    return stream_started_event(body, directory or Directory(), NOW, fallback_id="s-fallback")


def ended(payload: dict, directory: Directory | None = None) -> StreamEnded:
    return stream_ended_event(decode_ended(msgspec.json.encode(payload)), directory or Directory(), NOW)


def test_reference_started_maps_to_our_event_on_the_engine_at_that_address():
    event = started(ACEXY_STARTED)
    assert event.container_id == "acestream-1", "the proxy's own container id falls back to host:port"
    assert (event.content_key, event.key_type, event.is_live) == ("94c2fd8f", "content_id", True)
    assert (event.playback_session_id, event.stat_url) == ("ps-1", "http://e/ace/stat/x/ps-1")
    assert event.started_at == NOW and event.stream_id == to_key("94c2fd8f|client-1")


def test_stream_ids_are_keys_and_stable_between_start_and_end():
    event = started(ACEXY_STARTED)
    assert is_key(msgspec.json.encode(event.stream_id)) == event.stream_id
    assert ended({"stream_id": "94c2fd8f|client-1", "container_id": "acexy-proxy"}).stream_id == event.stream_id
    assert to_key("already-a-key") == "already-a-key"
    assert to_key("x" * 300) != "x" * 300 and len(to_key("x" * 300)) < 40


def test_without_a_stream_id_the_session_decides_so_retries_agree():
    unlabelled = {k: v for k, v in ACEXY_STARTED.items() if k != "labels"}
    assert started(unlabelled).stream_id == started(unlabelled).stream_id == to_key("94c2fd8f|ps-1")
    ours = {"container_id": "acestream-1", "playback_session_id": "ps-9"}
    assert started(ours).stream_id == "ps-9"
    assert started({"container_id": "acestream-1"}).stream_id == "s-fallback"


def test_our_flat_shape_passes_through_and_wins_over_nested_fields():
    event = started(
        {
            "stream_id": "s1",
            "container_id": "acestream-1",
            "content_key": "ch",
            "key_type": "infohash",
            "is_live": False,
            "reservation_id": "r1",
            "stream": {"key_type": "url", "key": "other"},
        }
    )
    assert (event.stream_id, event.container_id, event.reservation_id) == ("s1", "acestream-1", "r1")
    assert (event.content_key, event.key_type, event.is_live) == ("ch", "infohash", False)


@pytest.mark.parametrize(
    "payload, error, text",
    [
        ({"container_id": "ghost"}, UnknownEngine, "engine ghost not found"),
        (
            ACEXY_STARTED | {"engine": {"host": "10.0.0.9", "port": 1}},
            UnknownEngine,
            "no engine registered at 10.0.0.9:1",
        ),
        ({"stream_id": "s1"}, CompatError, "needs container_id"),
    ],
)
def test_started_that_names_no_known_engine_is_refused(payload, error, text):
    with pytest.raises(error, match=text) as caught:
        started(payload)
    assert caught.value.status == (404 if error is UnknownEngine else 422)


def test_ended_without_stream_id_ends_the_newest_stream_on_a_known_engine():
    directory = Directory(newest={"acestream-1": "s-new"})
    event = ended({"container_id": "acestream-1", "reason": "eof"}, directory)
    assert (event.stream_id, event.container_id, event.reason, event.ended_at) == ("s-new", "acestream-1", "eof", NOW)
    with pytest.raises(UnknownStream):
        ended({"container_id": "acestream-1"})
    with pytest.raises(UnknownEngine):
        ended({"container_id": "acexy-proxy"})
    with pytest.raises(CompatError, match="needs stream_id"):
        ended({})


def test_ended_drops_a_container_id_we_do_not_know():
    assert ended({"stream_id": "s1", "container_id": "acexy-proxy"}).container_id is None


def test_bodies_are_strict_at_the_top_and_lenient_inside_the_reference_parts():
    def refusal(raw: bytes) -> str:  # what the gateway answers, in our words
        with pytest.raises(msgspec.ValidationError) as caught:
            decode_started(raw)
        return describe_decode_error(caught.value, raw, StreamStartedBody)

    assert refusal(b'{"stream_key": "x"}').startswith("invalid body: field `$.stream_key` is not accepted")
    decode_started(msgspec.json.encode(ACEXY_STARTED))  # session.something_new is ignored
    assert refusal(b'{"session": {"is_live": "yes"}}').startswith(
        "invalid body: field `$.session.is_live`: expected true or false"
    )


@pytest.mark.parametrize(
    "host, port, expected",
    [
        ("127.0.0.1", 6878, "ext-127-0-0-1-6878"),
        ("engine.lan", 1, "ext-engine-lan-1"),
        ("::1", 40000, "ext-1-40000"),
        ("[fe80::1%eth0]", 9, "ext-fe80-1-eth0-9"),
    ],
)
def test_engine_ids_from_addresses_are_keys(host, port, expected):
    assert engine_id_for(host, port) == expected
    assert is_key(msgspec.json.encode(expected)) == expected
