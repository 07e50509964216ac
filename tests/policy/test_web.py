"""shared.policy.web: which requests a web page may have forged. Pure, no I/O."""

from __future__ import annotations

import re

import pytest

from shared.config import ConfigError, load_config
from shared.policy.web import allowed_hosts, check_request, host_name

DEFAULT = allowed_hosts((), "127.0.0.1")


def test_unconfigured_hosts_are_the_loopback_names_and_the_bind_address():
    assert DEFAULT == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts((), "10.1.2.3") == {"localhost", "127.0.0.1", "::1", "10.1.2.3"}
    assert allowed_hosts((), "0.0.0.0") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(("orch.lan", "[::1]"), "0.0.0.0") == {"orch.lan", "::1"}
    assert allowed_hosts(("*",), "127.0.0.1") is None


@pytest.mark.parametrize(
    "header, name",
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("orch.lan:80", "orch.lan"),
    ],
)
def test_host_names_lose_their_port(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.1"])
def test_our_own_names_pass(host):
    assert check_request("GET", host, None, None, False, DEFAULT) is None
    assert check_request("POST", host, None, "application/json", True, DEFAULT) is None


def test_a_rebound_name_is_refused_on_reads_and_writes_unless_any_host_is_allowed():
    for method in ("GET", "POST"):
        refusal = check_request(method, "attacker.example:8000", None, "application/json", True, DEFAULT)
        assert refusal is not None and refusal.status == 421
        assert "'attacker.example'" in refusal.message and "GATEWAY_ALLOWED_HOSTS" in refusal.message
    assert check_request("POST", "attacker.example", None, "application/json", True, None) is None


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.2:8000", "http://evil.example", "null", "http://127.0.0.1:9999", "::"]
)
def test_writes_from_another_origin_are_refused(origin):
    refusal = check_request("POST", "127.0.0.1:8000", origin, "application/json", True, DEFAULT)
    assert refusal is not None and refusal.status == 403 and "cross-origin" in refusal.message
    assert check_request("DELETE", "127.0.0.1:8000", origin, None, False, DEFAULT).status == 403
    assert (
        check_request("GET", "127.0.0.1:8000", origin, None, False, DEFAULT) is None
    )  # reads: CORS keeps them private


def test_same_origin_writes_pass():
    assert check_request("POST", "127.0.0.1:8000", "http://127.0.0.1:8000", "application/json", True, DEFAULT) is None
    assert check_request("POST", "LOCALHOST:8000", "http://localhost:8000", "application/json", True, DEFAULT) is None


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ],
)
def test_write_bodies_must_be_json(content_type):
    refusal = check_request("POST", "127.0.0.1:8000", None, content_type, True, DEFAULT)
    assert refusal is not None and refusal.status == 415 and "application/json" in refusal.message


def test_json_with_parameters_and_bodiless_writes_pass():
    assert check_request("POST", "127.0.0.1", None, "Application/JSON; charset=utf-8", True, DEFAULT) is None
    assert check_request("POST", "127.0.0.1", None, None, False, DEFAULT) is None  # curl -X POST .../engines/select
    assert check_request("DELETE", "127.0.0.1", None, None, False, DEFAULT) is None
    # A content type that is not JSON is refused even without a body: a bodiless text/plain fetch selects too.
    assert check_request("POST", "127.0.0.1", None, "text/plain", False, DEFAULT).status == 415


@pytest.mark.parametrize(
    "raw, message",
    [
        ("http://orch.lan", "GATEWAY_ALLOWED_HOSTS must list host names without ports or schemes"),
        ("orch.lan:8000", "GATEWAY_ALLOWED_HOSTS must list host names without ports or schemes"),
        ("*,orch.lan", "GATEWAY_ALLOWED_HOSTS: * means any host"),
        (",", "GATEWAY_ALLOWED_HOSTS must list host names"),
    ],
)
def test_invalid_allowed_hosts_fail_naming_the_variable(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config({"GATEWAY_ALLOWED_HOSTS": raw})
    assert load_config({"GATEWAY_ALLOWED_HOSTS": "Orch.LAN, [::1]"}).gateway_allowed_hosts == ("orch.lan", "[::1]")
