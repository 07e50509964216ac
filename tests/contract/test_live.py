"""The document's examples against a running system, and the README's JavaScript proxy."""

from __future__ import annotations

import asyncio
import json
import os
import re

from contract_helpers import JS_DIR, resolve, run_node, schema_validator
from support import ROOT, keeper_stats, request_json, wait_until

from shared import names
from shared.schemas import EngineHealth, encode, utcnow

# No prober runs in the examples test: a verdict the test reports must hold until it is done with it.
LASTING_VERDICT = {"HEALTH_CHECK_INTERVAL_S": 60, "HEALTH_CHECK_TIMEOUT_S": 5, "HEALTH_RECHECK_S": 5}
PROVISION_TIMEOUT_S = 45  # a local acesim engine starts, registers and turns healthy meanwhile


def _message(contract: dict, title: str) -> dict:
    return next(m for m in contract["components"]["messages"].values() if m["title"] == title)


def _example(contract: dict, title: str) -> dict:
    return _message(contract, title)["examples"][0]


async def _publish_event(nc, contract: dict, subject: str) -> None:
    example = _example(contract, subject)
    ack = await nc.jetstream().publish(subject, json.dumps(example["payload"]).encode(), headers=example["headers"])
    assert not ack.duplicate, subject


async def _ask(nc, contract: dict, subject: str, timeout: float = 5.0) -> dict:
    """Send the request example; the answer must be the documented reply or a documented error, never a 400."""
    key = next(key for key, channel in contract["channels"].items() if channel["address"] == subject)
    operation = next(o for o in contract["operations"].values() if o["channel"]["$ref"] == f"#/channels/{key}")
    reply_ref, error_ref = (resolve(contract, ref["$ref"])["$ref"] for ref in operation["reply"]["messages"])
    body, headers = await request_json(
        nc, subject, _example(contract, f"{subject} request")["payload"], timeout=timeout
    )
    code = headers.get("Nats-Service-Error-Code")
    if code is None:
        schema_validator(contract, resolve(contract, reply_ref)["payload"]["$ref"]).validate(body)
        return body
    assert code != "400", (subject, body)
    error = resolve(contract, error_ref)
    schema_validator(contract, error["payload"]["$ref"]).validate(body)
    assert code in error["headers"]["properties"]["Nats-Service-Error-Code"]["enum"], (subject, code)
    assert str(body["code"]) == code, (subject, body)
    return body


async def _health(nc, engine_id: str) -> bool:
    record, _ = await request_json(nc, names.ENGINE_GET, {"container_id": engine_id})
    return record.get("health_status") == "healthy"


def _collector(into: list[dict]):
    async def collect(msg) -> None:
        into.append(json.loads(msg.data))

    return collect


async def test_every_example_is_accepted_or_answered(live_system, nc, contract):
    # No prober, and a verdict that holds for the whole test: the test's health reports decide.
    await live_system(prober=False, MIN_REPLICAS=0, **LASTING_VERDICT)
    heard: dict[str, list[dict]] = {names.ENGINE_IDLE: [], names.ENGINE_DEMAND: []}
    for subject, messages in heard.items():
        await nc.subscribe(subject, cb=_collector(messages))
    engine_id = _example(contract, names.ENGINE_REGISTERED)["payload"]["container_id"]

    async def applied(*subjects: str) -> bool:
        counts = (await keeper_stats(nc)).get("applied", {})
        return all(counts.get(subject, 0) >= 1 for subject in subjects)

    await _publish_event(nc, contract, names.ENGINE_REGISTERED)
    await _publish_event(nc, contract, names.ENGINE_HEALTH)
    await wait_until(lambda: applied(names.ENGINE_REGISTERED, names.ENGINE_HEALTH), what="engine events applied")
    # The example's verdict is from a fixed past date, so stale; a current one lets the selection succeed.
    fresh = EngineHealth(container_id=engine_id, ok=True, checked_at=utcnow())
    await nc.jetstream().publish(names.ENGINE_HEALTH, encode(fresh))
    await wait_until(lambda: _health(nc, engine_id), what="a current health verdict")
    assert (await _ask(nc, contract, names.ENGINE_GET))["container_id"] == engine_id
    assert [e["container_id"] for e in (await _ask(nc, contract, names.ENGINE_LIST))["engines"]] == [engine_id]
    selected = await _ask(nc, contract, names.ENGINE_SELECT)
    assert selected["engine"]["container_id"] == engine_id

    await _publish_event(nc, contract, names.STREAM_STARTED)
    await wait_until(lambda: applied(names.STREAM_STARTED), what="stream.started applied")
    stream_id = _example(contract, names.STREAM_STARTED)["payload"]["stream_id"]
    assert [s["stream_id"] for s in (await _ask(nc, contract, names.STREAM_LIST))["streams"]] == [stream_id]
    await nc.publish(names.STREAM_STATS, json.dumps(_example(contract, names.STREAM_STATS)["payload"]).encode())
    await _publish_event(nc, contract, names.STREAM_ENDED)
    await wait_until(lambda: applied(names.STREAM_ENDED), what="stream.ended applied")
    await _ask(nc, contract, names.ENGINE_CLAIM)  # the selection's reservation still holds it: 409 is an answer
    await _ask(nc, contract, names.ENGINE_RELEASE)

    await _publish_event(nc, contract, names.ENGINE_CLEANED)
    await _publish_event(nc, contract, names.ENGINE_REMOVED)
    await wait_until(lambda: applied(*names.EVENT_SUBJECTS), what="every event applied")
    assert (await _ask(nc, contract, names.ENGINE_SELECT))["error"] == "no_capacity"  # the engine is gone
    assert (await keeper_stats(nc)).get("rejected", {}) == {}
    assert (await keeper_stats(nc)).get("bad_requests", {}) == {}

    # What the system itself sends fits the document too.
    await wait_until(
        lambda: heard[names.ENGINE_IDLE] and heard[names.ENGINE_DEMAND], what="engine.idle and engine.demand"
    )
    for subject, bodies in heard.items():
        validator = schema_validator(contract, _message(contract, subject)["payload"]["$ref"])
        for body in bodies:
            validator.validate(body)
    assert {"container_id": engine_id} in heard[names.ENGINE_IDLE]

    await _ask(nc, contract, names.ENGINE_PROVISION, timeout=PROVISION_TIMEOUT_S)


def readme_js_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-example: js-proxy -->\s*```js\n(.*?)```", text, re.S)
    assert match, "README example js-proxy not found"
    return match.group(1)


def test_the_readme_shows_the_javascript_example_verbatim():
    assert readme_js_example() == (JS_DIR / "proxy-example.mjs").read_text()
    assert "asyncapi.yaml" in (ROOT / "README.md").read_text()


async def test_the_javascript_example_selects_reports_and_ends_a_stream(live_system, nc, node, nats_server):
    await live_system(MIN_REPLICAS=1)

    async def healthy_engine() -> dict | None:
        engines = (await request_json(nc, names.ENGINE_LIST, {"health_status": "healthy"}))[0]["engines"]
        return engines[0] if engines else None

    engine = await wait_until(healthy_engine, timeout=60, interval=0.2, what="a healthy engine")
    env = {**os.environ, "NATS_URL": nats_server.url}
    ran = await asyncio.to_thread(run_node, node, "proxy-example.mjs", "contract-test-channel", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    stream_id = ran.stdout.strip().splitlines()[-1]

    async def ended() -> dict | None:
        streams = (await request_json(nc, names.STREAM_LIST, {"status": "ended"}))[0]["streams"]
        return next((s for s in streams if s["stream_id"] == stream_id), None)

    record = await wait_until(ended, what=f"stream {stream_id} ended")
    assert record["container_id"] == engine["container_id"] and record["content_key"] == "contract-test-channel"
    assert record["started_at"] and record["reason"] == "viewers_left" and record["playback_session_id"]
    assert (await keeper_stats(nc)).get("rejected", {}) == {}
