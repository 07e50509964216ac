"""Configuration: defaults from DESIGN §6, and errors that name the variable."""

import socket
import subprocess
import sys

import pytest
from support import ROOT, free_port

from shared.config import ConfigError, default_host_id, load_config


def test_defaults_follow_the_design():
    config = load_config({})
    assert (config.health_check_interval_s, config.health_check_timeout_s) == (30, 5)
    assert (config.health_fail_threshold, config.health_rise_threshold, config.health_recheck_s) == (2, 2, 5)
    assert (config.min_replicas, config.min_free_replicas, config.max_replicas) == (2, 1, 10)
    assert (config.max_streams_per_engine, config.reservation_ttl_s, config.claim_ttl_s) == (3, 30, 60)
    assert config.share_content is True and config.auto_delete is True
    assert config.unhealthy_replace_after_s == 120 and config.gateway_port == 8000
    assert config.max_clock_skew_s == 30
    assert (config.host_max_engines, config.min_replicas_per_host) == (0, 0)  # one host, no per-host limits
    assert config.engine_host == "127.0.0.1"
    assert load_config({"ENGINE_HOST": "10.251.0.2"}).engine_host == "10.251.0.2"


def test_the_host_id_defaults_to_the_machines_name_made_a_valid_label(monkeypatch):
    assert load_config({"HOST_ID": "rack-2.eu"}).host_id == "rack-2.eu"
    monkeypatch.setattr(socket, "gethostname", lambda: "node-7.example")
    assert load_config({}).host_id == "node-7.example"
    monkeypatch.setattr(socket, "gethostname", lambda: "my host/1")
    assert default_host_id() == "my-host-1"
    monkeypatch.setattr(socket, "gethostname", lambda: "...")
    assert default_host_id() == "localhost"
    monkeypatch.setattr(socket, "gethostname", lambda: "x" * 80)
    assert default_host_id() == "x" * 63


def test_values_are_parsed_by_type():
    config = load_config(
        {
            "AUTO_DELETE": "false",
            "MAX_REPLICAS": "40",
            "ENGINE_PORT_RANGE": "41000-41010",
            "HEALTH_CHECK_INTERVAL_S": "2.5",
            "HEALTH_CHECK_TIMEOUT_S": "1",
            "SHARE_CONTENT": "0",
        }
    )
    assert config.auto_delete is False and config.max_replicas == 40 and config.share_content is False
    assert config.engine_port_range == (41000, 41010) and config.health_check_interval_s == 2.5


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MAX_REPLICAS": "ten"}, "MAX_REPLICAS must be an integer, got 'ten'"),
        ({"HEALTH_CHECK_INTERVAL_S": "-1"}, "HEALTH_CHECK_INTERVAL_S must be >= 0.001"),
        ({"AUTO_DELETE": "perhaps"}, "AUTO_DELETE must be true or false, got 'perhaps'"),
        ({"ENGINE_RUNTIME": "k8s"}, "ENGINE_RUNTIME must be one of docker, local, external"),
        ({"ENGINE_PORT_RANGE": "9-1"}, "ENGINE_PORT_RANGE must be FIRST-LAST"),
        ({"NATS_URL": "http://x"}, "NATS_URL must be a nats:// URL"),
        ({"MIN_REPLICAS": "11"}, "MIN_REPLICAS (11) must not exceed MAX_REPLICAS (10)"),
        ({"HEALTH_CHECK_TIMEOUT_S": "60"}, "HEALTH_CHECK_TIMEOUT_S (60.0) must not exceed HEALTH_CHECK_INTERVAL_S"),
        ({"MAX_CLOCK_SKEW_S": "-5"}, "MAX_CLOCK_SKEW_S must be >= 0, got '-5'"),
        ({"MAX_CLOCK_SKEW_S": "soon"}, "MAX_CLOCK_SKEW_S must be a number, got 'soon'"),
        ({"HOST_ID": "a b"}, "HOST_ID must be 1-63 letters, digits"),
        ({"ENGINE_HOST": "10.0.0.1:40000"}, "ENGINE_HOST must be an IP address or host name without port"),
        ({"ENGINE_HOST": "http://h"}, "ENGINE_HOST must be an IP address or host name without port"),
        ({"MIN_REPLICAS_PER_HOST": "-1"}, "MIN_REPLICAS_PER_HOST must be >= 0"),
        ({"HOST_MAX_ENGINES": "-1"}, "HOST_MAX_ENGINES must be >= 0, got '-1'"),
        ({"HOST_MAX_ENGINES": "few"}, "HOST_MAX_ENGINES must be an integer, got 'few'"),
        (
            {"HOST_MAX_ENGINES": "2", "MIN_REPLICAS_PER_HOST": "3"},
            "MIN_REPLICAS_PER_HOST (3) must not exceed HOST_MAX_ENGINES (2)",
        ),
    ],
)
def test_invalid_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(env)


def test_a_service_with_bad_config_exits_2_with_the_message():
    result = subprocess.run(
        [sys.executable, "-m", "services.state_keeper"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MAX_STREAMS_PER_ENGINE": "lots"},
    )
    assert result.returncode == 2
    assert "state-keeper: invalid configuration: MAX_STREAMS_PER_ENGINE must be an integer, got 'lots'" in result.stderr


def test_a_service_without_nats_fails_fast_with_a_hint():
    url = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "services.state_keeper"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "NATS_URL": url, "NATS_CONNECT_TIMEOUT_S": "2"},
    )
    assert result.returncode == 1
    assert f"cannot connect to NATS at {url}" in result.stderr and "is nats-server running?" in result.stderr
