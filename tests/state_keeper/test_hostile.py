"""Hostile input on every subject and endpoint: clear errors, counted rejections, KV untouched."""

from __future__ import annotations

import json

import pytest
from keeper_helpers import consumer_drained, publish, register_healthy
from support import keeper_stats, request_json, wait_until

from shared import names
from shared.schemas import StreamStarted

BIG = b'{"stream_id": "' + b"x" * (1024 * 1024 - 8 * 1024) + b'"}'  # ~1 MiB, under the server's max_payload


async def snapshot(bus) -> dict[str, bytes]:
    return {key: (await bus.engines.get(key)).value for key in await bus.engines.keys()}


async def test_bad_events_are_terminated_counted_and_change_nothing(start_keepers, bus, nc):
    [keeper] = await start_keepers(1, UNKNOWN_ENGINE_RETRY_S="1")
    await register_healthy(bus, nc, "e1")
    before = await snapshot(bus)
    bad = {
        "malformed_json": [b"not json", b"{", b"\xff\xfe"],
        # At most five of one reason on one subject: more are summarised, not logged one by one.
        "invalid": [b'{"stream_id": 5}', b"{}", b"[]", b'{"stream_id": "has spaces"}'],
        "invalid_health": [
            b"{}",
            b"[]",
            b'{"container_id": "e1", "ok": "yes", "checked_at": "now"}',
            b'{"container_id":"e1","ok":true,"checked_at":"2026-01-01T00:00:00"}',
        ],
        "too_large": [BIG],
        "unknown_engine": [
            json.dumps({"container_id": "ghost", "ok": True, "checked_at": "2026-11-28T00:00:00Z"}).encode()
        ],
    }
    subjects = {
        "malformed_json": names.EVENT_SUBJECTS,
        "invalid": [names.STREAM_STARTED],
        "invalid_health": [names.ENGINE_HEALTH],
        "too_large": names.EVENT_SUBJECTS,
        "unknown_engine": [names.ENGINE_HEALTH, names.ENGINE_CLEANED],
    }
    sent = {}
    for reason, payloads in bad.items():
        for subject in subjects[reason]:
            for payload in payloads:
                await publish(bus, subject, payload)
                counted_as = reason.removesuffix("_health")
                sent[counted_as] = sent.get(counted_as, 0) + 1
    # A valid event after all of them is still applied: the consumer keeps going.
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="ok1", container_id="e1"))
    await wait_until(lambda: consumer_drained(bus), timeout=30, what="consumer drained")

    stats = await keeper_stats(nc)
    assert stats["rejected"] == sent
    after = await snapshot(bus)
    assert set(after) == set(before) == {"e1"}
    assert json.loads(after["e1"])["streams"] == ["ok1"]
    assert await bus.streams.keys() == ["ok1"]
    # Each rejection is logged saying what was wrong, in our words: the place and what is expected.
    log = keeper.log()
    assert "(malformed_json): event is not valid JSON" in log
    assert "(malformed_json): event is not valid UTF-8" in log
    assert "(invalid): invalid event: field `$.stream_id`: expected a string" in log
    assert "(invalid): invalid event: field `$.ok`: expected true or false" in log
    assert "(invalid): invalid event: field `$.checked_at`: expected an RFC 3339 date-time with a timezone" in log
    assert "(invalid): invalid event: field `$.container_id` is required" in log


ENDPOINT_CASES = [
    (names.ENGINE_SELECT, b"{nope", 400, "request is not valid JSON"),
    (names.ENGINE_SELECT, b'{"content_key": 7}', 400, "invalid request: field `$.content_key`: expected a string"),
    (
        names.ENGINE_SELECT,
        b'{"key_type": "torrent"}',
        400,
        "field `$.key_type`: expected one of 'content_id', 'infohash', 'magnet', 'url'",
    ),
    (names.ENGINE_SELECT, b'{"surprise": 1}', 400, "invalid request: field `$.surprise` is not accepted"),
    (
        names.ENGINE_LIST,
        b'{"health_status": "great"}',
        400,
        "field `$.health_status`: expected one of 'healthy', 'unhealthy', 'unknown'",
    ),
    (names.ENGINE_GET, b"{}", 400, "invalid request: field `$.container_id` is required"),
    (names.ENGINE_GET, b'{"container_id": "ghost"}', 404, "engine ghost not found"),
    (names.ENGINE_GET, b'{"container_id": "a b"}', 400, "field `$.container_id`: expected a string"),
    (names.ENGINE_CLAIM, b'{"container_id": "ghost", "purpose": "clean", "holder": "t"}', 404, "not found"),
    (
        names.ENGINE_CLAIM,
        b'{"container_id": "e1", "purpose": "nap", "holder": "t"}',
        400,
        "field `$.purpose`: expected one of 'clean', 'reap'",
    ),
    (names.ENGINE_RELEASE, b'{"container_id": "ghost", "claim_id": "c"}', 404, "not found"),
    (names.ENGINE_RELEASE, b'{"container_id": "e1"}', 400, "field `$.claim_id` is required"),
    (names.STREAM_LIST, b'{"status": "paused"}', 400, "field `$.status`: expected one of 'ended', 'started'"),
    (names.STREAM_LIST, b"[1, 2]", 400, "invalid request: expected an object"),
]


@pytest.mark.parametrize("subject, payload, code, message", ENDPOINT_CASES)
async def test_bad_requests_get_clear_error_replies(start_keepers, bus, nc, subject, payload, code, message):
    await start_keepers(1)
    await register_healthy(bus, nc, "e1")
    before = await snapshot(bus)
    body, headers = await request_json(nc, subject, payload)
    assert headers["Nats-Service-Error-Code"] == str(code)
    assert body["code"] == code and message in body["error"], body
    assert await snapshot(bus) == before


async def test_huge_requests_are_refused_on_every_endpoint(start_keepers, nc):
    await start_keepers(1)
    for subject in (
        names.ENGINE_SELECT,
        names.ENGINE_LIST,
        names.ENGINE_GET,
        names.ENGINE_CLAIM,
        names.ENGINE_RELEASE,
        names.STREAM_LIST,
    ):
        body, headers = await request_json(nc, subject, BIG)
        assert headers["Nats-Service-Error-Code"] == "400" and "exceeds" in body["error"], subject
    stats = await keeper_stats(nc)
    assert sum(stats["bad_requests"].values()) == 6
