"""Scenario 6: Hypothesis-generated hostile input on every event subject, every request/reply
endpoint and every HTTP endpoint of the gateway.

No crash, no 5xx (a 503 is accepted only where the API documents it: no capacity),
every request answered, the event consumer keeps going (drained, and a valid event
sent afterwards is applied), every record in KV still decodes strictly and the
records agree with each other.

Hypothesis runs in a worker thread; each example is sent on the test's event loop
(so the real services are in the loop and Hypothesis can shrink a failing payload).
No prober runs here: hostile `engine.registered` events name arbitrary hosts, and
nothing may contact them (loopback only).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import Counter
from datetime import timedelta

import httpx
import msgspec
from chaos_load import raw_records, record_invariants, snapshot, wait_drained
from chaos_stack import engine_records, register
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import keeper_stats, wait_until

from shared import names
from shared.schemas import (
    EVENT_TYPES,
    ClaimRequest,
    EngineHealth,
    GetRequest,
    ListRequest,
    ReleaseRequest,
    SelectRequest,
    StreamListRequest,
    StreamStarted,
    decode_engine,
    decode_stream,
    encode,
    utcnow,
)

ENGINES = ["h-1", "h-2", "h-3"]
STREAMS = ["st-1", "st-2", "st-3"]
EXAMPLES = 250
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ---------------------------------------------------------------- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from(ENGINES + STREAMS) | st.from_regex(r"\A[-_a-z0-9]{1,12}\Z") | st.text(max_size=60)
timestamps = st.sampled_from(
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "yesterday", "2999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z"]
) | st.datetimes().map(lambda d: d.isoformat())
FIELD_VALUES = {
    "stream_id": ids,
    "container_id": ids,
    "holder": st.text(max_size=300),
    "claim_id": ids,
    "host": st.sampled_from(["127.0.0.1", "localhost", "", "10.0.0.1", "::1", "a b"]) | st.text(max_size=300),
    "port": st.integers(min_value=-5, max_value=70000),
    "ok": st.booleans(),
    "checked_at": timestamps,
    "started_at": timestamps,
    "ended_at": timestamps,
    "cleaned_at": timestamps,
    "key_type": st.sampled_from(["content_id", "infohash", "url", "magnet", "torrent", ""]),
    "runtime": st.sampled_from(["docker", "local", "external", "vm"]),
    "purpose": st.sampled_from(["clean", "reap", "nap"]),
    "status": st.sampled_from(["started", "ended", "paused"]),
    "health_status": st.sampled_from(["healthy", "unhealthy", "unknown", "great"]),
    "state": st.sampled_from(["active", "draining", "cleaning", "gone"]),
    "latency_ms": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    "cache_size_bytes": st.integers(min_value=-10, max_value=2**65),
    "labels": st.dictionaries(st.text(max_size=300), st.text(max_size=50), max_size=70) | json_values,
    "reservation_id": ids,
}


def shaped(fields: list[str]) -> st.SearchStrategy[dict]:
    """Objects with the type's field names, each absent, well-typed-ish or hostile, plus strangers."""
    value_for = {name: FIELD_VALUES.get(name, st.text(max_size=80)) | json_values for name in fields}
    return st.fixed_dictionaries({}, optional=value_for).flatmap(
        lambda base: (
            st.dictionaries(st.text(max_size=10), json_values, max_size=2).map(lambda extra: {**extra, **base})
            | st.just(base)
        )
    )


def payloads(fields: list[str]) -> st.SearchStrategy[bytes]:
    as_json = (shaped(fields) | json_values).map(lambda value: json.dumps(value).encode())
    return (
        as_json
        | as_json.flatmap(lambda data: st.integers(0, max(len(data) - 1, 0)).map(lambda cut: data[:cut]))
        | st.binary(max_size=120)
        | st.sampled_from(
            [b"", b"null", b"{}", b"[]", b"\xff\xfe{", b"{" * 5000, b'{"stream_id": "' + b"x" * 70000 + b'"}']
        )
    )


def fields_of(kind) -> list[str]:
    return list(kind.__struct_fields__)


pool_ids = st.sampled_from(ENGINES + ["h-new"])
now_ish = st.integers(-5, 5).map(lambda s: (utcnow() + timedelta(seconds=s)).isoformat())
VALID_EVENTS = {
    names.STREAM_STARTED: st.fixed_dictionaries(
        {"stream_id": st.sampled_from(STREAMS), "container_id": pool_ids},
        optional={"content_key": st.text(max_size=20), "started_at": now_ish},
    ),
    names.STREAM_ENDED: st.fixed_dictionaries(
        {"stream_id": st.sampled_from(STREAMS)}, optional={"container_id": pool_ids, "reason": st.text(max_size=20)}
    ),
    names.ENGINE_HEALTH: st.fixed_dictionaries({"container_id": pool_ids, "ok": st.booleans(), "checked_at": now_ish}),
    names.ENGINE_REGISTERED: st.fixed_dictionaries(
        {
            "container_id": pool_ids,
            "host": st.just("127.0.0.1"),
            "port": st.integers(30001, 30004),
            "runtime": st.sampled_from(["local", "external"]),
        }
    ),
    names.ENGINE_REMOVED: st.fixed_dictionaries({"container_id": pool_ids}, optional={"reason": st.text(max_size=20)}),
    names.ENGINE_CLEANED: st.fixed_dictionaries(
        {"container_id": pool_ids, "ok": st.booleans()},
        optional={"cache_size_bytes": st.integers(0, 2**40), "cleaned_at": now_ish},
    ),
}
# Half near-valid (so state changes happen and races with the hostile ones are exercised), half hostile.
EVENT_CASES = st.one_of(
    *(
        st.tuples(
            st.just(subject),
            VALID_EVENTS[subject].map(lambda v: json.dumps(v).encode()) | payloads(fields_of(kind)),
            st.booleans(),
        )
        for subject, kind in EVENT_TYPES.items()
    )
)
REQUEST_TYPES = {
    names.ENGINE_SELECT: SelectRequest,
    names.ENGINE_LIST: ListRequest,
    names.ENGINE_GET: GetRequest,
    names.ENGINE_CLAIM: ClaimRequest,
    names.ENGINE_RELEASE: ReleaseRequest,
    names.STREAM_LIST: StreamListRequest,
}
REQUEST_CASES = st.one_of(
    *(st.tuples(st.just(subject), payloads(fields_of(kind))) for subject, kind in REQUEST_TYPES.items())
)

path_ids = (ids | st.text(max_size=80)).map(lambda text: urllib.parse.quote(text, safe=""))
queries = st.dictionaries(
    st.sampled_from(["health_status", "state", "status", "container_id", "x", ""]),
    st.sampled_from(["healthy", "started", "ended", "cleaning", ""]) | st.text(max_size=30),
    max_size=3,
)
ENGINE_BODY = ["host", "port", "container_id", "container_name", "labels"]
STARTED_BODY = fields_of(StreamStarted) + ["engine", "stream", "session", "labels"]
HTTP_CASES = st.one_of(
    st.tuples(st.just("GET"), st.just("/engines"), queries, st.none()),
    st.tuples(st.just("GET"), path_ids.map(lambda i: f"/engines/{i}"), queries, st.none()),
    st.tuples(st.just("GET"), st.just("/streams"), queries, st.none()),
    st.tuples(st.just("POST"), st.just("/engines/select"), queries, payloads(fields_of(SelectRequest))),
    st.tuples(st.just("POST"), st.just("/engines"), queries, payloads(ENGINE_BODY)),
    st.tuples(st.just("DELETE"), path_ids.map(lambda i: f"/engines/{i}"), queries, st.none()),
    st.tuples(st.just("POST"), st.just("/events/stream_started"), queries, payloads(STARTED_BODY)),
    st.tuples(
        st.just("POST"),
        st.just("/events/stream_ended"),
        queries,
        payloads(["stream_id", "container_id", "reason", "ended_at"]),
    ),
    st.tuples(
        st.sampled_from(["GET", "HEAD"]),
        st.sampled_from(["/healthz", "/metrics", "/openapi.json", "/", "/schema"]),
        queries,
        st.none(),
    ),
    st.tuples(
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        st.text(max_size=40).map(lambda p: "/" + urllib.parse.quote(p)),
        queries,
        st.none() | st.binary(max_size=50),
    ),
)


# ---------------------------------------------------------------- the scenario


async def test_hostile_input_never_crashes_or_corrupts_records(stack, figures):
    stack.start_nats()
    stack.configure(UNKNOWN_ENGINE_RETRY_S=1, MAX_STREAMS_PER_ENGINE=3)
    stack.start("state_keeper", 2)
    stack.start("gateway")
    bus = await stack.client()
    await stack.ready(bus.nc)
    for i, engine in enumerate(ENGINES):
        await register(bus, 30001 + i, runtime="local", container_id=engine)
        await bus.js.publish(
            names.ENGINE_HEALTH, encode(EngineHealth(container_id=engine, ok=True, checked_at=utcnow()))
        )
    await wait_until(lambda: _all_healthy(bus), timeout=20, what="seed engines healthy")

    loop = asyncio.get_running_loop()
    tally: Counter = Counter()
    gateway = stack.gateway_url()
    http = httpx.AsyncClient(base_url=gateway, timeout=10)

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    @SETTINGS
    @given(case=EVENT_CASES)
    def events(case):
        on_loop(_send_event(bus, *case, tally))

    @SETTINGS
    @given(case=REQUEST_CASES)
    def requests(case):
        problem = on_loop(_send_request(bus, *case, tally))
        assert problem is None, problem

    @SETTINGS
    @given(case=HTTP_CASES)
    def http_calls(case):
        problem = on_loop(_send_http(http, *case, tally))
        assert problem is None, problem

    try:
        for run in (events, requests, http_calls):
            await asyncio.to_thread(run)
        live = await _live_feed_answers(gateway)
    finally:
        await http.aclose()

    # The consumer kept going: drained, and a valid event sent now is applied.
    await wait_drained(bus, timeout=60)
    await register(bus, 30009, runtime="local", container_id="after-1")
    await bus.js.publish(
        names.STREAM_STARTED, encode(StreamStarted(stream_id="after-the-storm", container_id="after-1"))
    )
    await wait_drained(bus, timeout=30)
    engines, streams = await snapshot(bus)
    raw_engines = await raw_records(bus, names.ENGINES_BUCKET)
    raw_streams = await raw_records(bus, names.STREAMS_BUCKET)
    undecodable = []
    for key, data in raw_engines.items():
        try:
            decode_engine(data)
        except msgspec.DecodeError as exc:
            undecodable.append(f"engine {key}: {exc}")
    for key, data in raw_streams.items():
        try:
            decode_stream(data)
        except msgspec.DecodeError as exc:
            undecodable.append(f"stream {key}: {exc}")
    invariants = record_invariants(engines, streams, utcnow())
    stats = await keeper_stats(bus.nc)

    figures.update(
        examples_per_family=EXAMPLES,
        sent=dict(sorted(tally.items())),
        engine_records=len(raw_engines),
        stream_records=len(raw_streams),
        events_rejected_by_reason=stats.get("rejected", {}),
        bad_requests_by_endpoint=stats.get("bad_requests", {}),
        live_feed_ok=live,
        undecodable=undecodable[:5],
        invariant_violations=invariants[:5],
    )
    assert not stack.crashed(), stack.crashed()
    assert not undecodable, undecodable[:5]
    assert not invariants, invariants[:10]
    assert "after-the-storm" in streams and "after-the-storm" in engines["after-1"].streams
    assert sum(stats.get("rejected", {}).values()) > 0 and sum(stats.get("bad_requests", {}).values()) > 0
    assert live


async def _send_event(bus, subject: str, data: bytes, via_jetstream: bool, tally: Counter) -> None:
    tally[f"event {subject}"] += 1
    if via_jetstream:
        try:
            await bus.js.publish(subject, data, timeout=5)
        except Exception as exc:  # e.g. the server's max_payload: refused at the door is fine
            tally[f"event refused by NATS: {type(exc).__name__}"] += 1
    else:
        await bus.nc.publish(subject, data)


async def _send_request(bus, subject: str, data: bytes, tally: Counter) -> str | None:
    tally[f"request {subject}"] += 1
    try:
        msg = await bus.nc.request(subject, data, timeout=5)
    except Exception as exc:
        if len(data) > 1024 * 1024:
            return None
        return f"{subject} {data[:200]!r}: no reply ({type(exc).__name__})"
    code = (msg.headers or {}).get("Nats-Service-Error-Code")
    tally[f"request reply {code or 'ok'}"] += 1
    if code is None:
        json.loads(msg.data)
        return None
    body = json.loads(msg.data)
    if code.startswith("5") and not (code == "503" and body.get("error") == "no_capacity"):
        return f"{subject} {data[:200]!r}: {code} {body}"
    return None


async def _send_http(http: httpx.AsyncClient, method: str, path: str, query: dict, body: bytes | None, tally: Counter):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        response = await http.request(method, path, params=query, content=body, headers=headers)
    except httpx.InvalidURL:
        return None
    except httpx.HTTPError as exc:
        return f"{method} {path} {query}: {type(exc).__name__} {exc}"
    tally[f"http {response.status_code}"] += 1
    if response.status_code >= 500 and not (response.status_code == 503 and b"no_capacity" in response.content):
        return f"{method} {path} {query} {body!r:.200}: {response.status_code} {response.text[:300]}"
    return None


async def _live_feed_answers(base_url: str) -> bool:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", f"{base_url}/api/live") as response:
            async for line in response.aiter_lines():
                if line.startswith("event: snapshot") or line.startswith("event:snapshot"):
                    return response.status_code == 200
    return False


async def _all_healthy(bus) -> bool:
    records = await engine_records(bus)
    return all(e in records and records[e].health_status == "healthy" for e in ENGINES)
