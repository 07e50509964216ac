"""asyncapi.yaml: what the code generates, complete, and its examples valid against its own schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema_rs
import yaml
from contract_helpers import DOCUMENT, resolve, run_node, schema_validator
from hypothesis import given
from hypothesis import strategies as st
from nats.micro.service import DEFAULT_QUEUE_GROUP
from support import ROOT

from shared import asyncapi, names
from shared.yaml_text import dumps

# DESIGN §11's roles.
ROLES = {"proxy", "prober", "state-keeper", "janitor", "reaper", "provisioner", "gateway", "operator"}


def test_the_committed_file_is_what_the_code_generates():
    assert DOCUMENT.read_text() == asyncapi.render(), "asyncapi.yaml is stale: run `aceorch contract`"


def test_the_cli_check_tells_a_stale_file_from_a_current_one(tmp_path):
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(asyncapi.render().replace("stream.started", "stream.begun"))
    check = [sys.executable, "-m", "services.cli", "contract", "--check", "--output", str(stale)]
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 1
    written = subprocess.run([sys.executable, "-m", "services.cli", "contract", "--output", str(stale)], cwd=ROOT)
    assert written.returncode == 0 and stale.read_text() == DOCUMENT.read_text()
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 0


def test_every_subject_in_names_is_a_channel(contract):
    subjects = {
        value
        for key, value in vars(names).items()
        if key.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z]+\.[a-z]+", value)
    }
    addresses = {channel["address"] for channel in contract["channels"].values() if channel["address"]}
    assert addresses == subjects
    assert set(names.EVENT_SUBJECTS) == {
        channel["address"] for channel in contract["channels"].values() if "ACE_EVENTS" in channel["description"]
    }


def test_requests_are_served_in_micros_queue_group_and_events_carry_a_msg_id(contract):
    answered = [operation for operation in contract["operations"].values() if "reply" in operation]
    assert len(answered) == 7  # six state-keeper endpoints and engine.provision
    for operation in answered:
        assert operation["bindings"]["nats"]["queue"] == DEFAULT_QUEUE_GROUP
        reply, error = (
            resolve(contract, resolve(contract, ref["$ref"])["$ref"]) for ref in operation["reply"]["messages"]
        )
        assert "headers" not in reply
        assert set(error["headers"]["required"]) == {"Nats-Service-Error", "Nats-Service-Error-Code"}
        assert "400" in error["headers"]["properties"]["Nats-Service-Error-Code"]["enum"]
    for subject in names.EVENT_SUBJECTS:
        message = next(m for m in contract["components"]["messages"].values() if m["title"] == subject)
        assert "Nats-Msg-Id" in message["headers"]["properties"]
        assert all(example["headers"]["Nats-Msg-Id"] for example in message["examples"])


def test_every_channel_names_who_may_publish_and_subscribe(contract):
    for key, channel in contract["channels"].items():
        if channel["address"] is None:
            continue  # a reply inbox: whoever asked
        roles = channel["x-roles"]
        assert roles["publish"] and roles["subscribe"], key
        assert set(roles["publish"]) | set(roles["subscribe"]) <= ROLES, key
    proxy_may = {
        channel["address"]
        for channel in contract["channels"].values()
        if channel["address"] and "proxy" in channel["x-roles"]["publish"]
    }
    assert {
        names.ENGINE_SELECT,
        names.ENGINE_GET,
        names.STREAM_STARTED,
        names.STREAM_ENDED,
        names.STREAM_STATS,
    } <= proxy_may


def test_schemas_stay_within_draft_07(contract):
    text = json.dumps(contract["components"]["schemas"])
    for keyword in ("prefixItems", "$defs", "dependentRequired", "unevaluatedProperties"):
        assert f'"{keyword}"' not in text


def test_every_example_is_valid_against_its_schemas(contract):
    messages = contract["components"]["messages"]
    for key, message in messages.items():
        payload = schema_validator(contract, message["payload"]["$ref"])
        headers = jsonschema_rs.Draft7Validator(message["headers"]) if "headers" in message else None
        assert message["examples"], key
        for example in message["examples"]:
            payload.validate(example["payload"])
            if headers is not None:
                headers.validate(example.get("headers", {}))


def test_the_schemas_reject_what_the_decoders_reject(contract):
    select = schema_validator(contract, "#/components/schemas/SelectRequest")
    assert select.is_valid({}) and not select.is_valid({"key_type": "torrent"}) and not select.is_valid({"extra": 1})
    started = schema_validator(contract, "#/components/schemas/StreamStarted")
    assert not started.is_valid({"container_id": "acestream-1"})  # stream_id is required
    errors = schema_validator(contract, "#/components/schemas/ErrorReply")
    assert errors.is_valid({"error": "no_capacity", "code": 503, "retry_after_s": 2.0})


def test_the_asyncapi_parser_finds_no_errors(node, tmp_path):
    # A copy with one wrong value shows the check would see an error (one parser start for both).
    broken = tmp_path / "broken.yaml"
    broken.write_text(DOCUMENT.read_text().replace("    action: receive\n", "    action: listen\n", 1))
    parsed = run_node(node, "validate.mjs", str(DOCUMENT), str(broken), timeout=120)
    diagnostics = [json.loads(line) for line in parsed.stdout.splitlines() if line.startswith("{")]
    errors = {d["file"] for d in diagnostics if d["severity"] == 0}
    assert errors == {str(broken)}, parsed.stdout + parsed.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_the_yaml_writer_round_trips_any_json_value(value):
    assert yaml.safe_load(dumps(value)) == value


def test_the_yaml_writer_refuses_what_json_cannot_hold():
    for bad in ({1: "a"}, {"a": float("nan")}, {"a": b"x"}):
        try:
            dumps(bad)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"{bad!r} was written")
