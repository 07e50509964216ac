"""docker-compose.yml as a document: every setting reaches the services, every service can scale."""

from __future__ import annotations

import dataclasses

import yaml
from support import ROOT

from shared.config import Config

SERVICES = ("state-keeper", "prober", "provisioner", "janitor", "reaper", "gateway")
# On the host network, replicas of one service would collide on a fixed metrics port.
NOT_PASSED = {"METRICS_PORT"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_configuration_variable_reaches_every_service():
    document = compose()
    wanted = {field.name.upper() for field in dataclasses.fields(Config)} - NOT_PASSED
    for name in SERVICES:
        environment = document["services"][name]["environment"]
        assert wanted - set(environment) == set(), f"{name} does not get {sorted(wanted - set(environment))}"
        assert set(environment) <= wanted, f"{name} gets unknown variables {sorted(set(environment) - wanted)}"


def test_services_use_the_host_network_without_fixed_names_or_ports():
    for name, service in compose()["services"].items():
        assert service["network_mode"] == "host", name
        assert "container_name" not in service and "ports" not in service, name


def test_each_service_runs_its_own_module_from_the_one_image():
    services = compose()["services"]
    for name in SERVICES:
        assert services[name]["image"] == "${ACEORCH_IMAGE:-aceorch/services:latest}"
        assert services[name]["command"] == [f"services.{name.replace('-', '_')}"]
        assert services[name]["depends_on"] == ["nats"]


def test_only_the_services_that_manage_engines_get_the_docker_socket():
    services = compose()["services"]
    for name in SERVICES:
        mounts = services[name].get("volumes", [])
        expects = name in ("provisioner", "janitor", "reaper")
        assert any(m.endswith(":/var/run/docker.sock") for m in mounts) is expects, name
        environment = services[name]["environment"]
        assert environment["ENGINE_RUNTIME"] == "${ENGINE_RUNTIME:-docker}"
        assert environment["DOCKER_NETWORK"] == "${DOCKER_NETWORK:-host}"


def test_the_cluster_profile_adds_two_nodes_with_the_shipped_configs():
    services = compose()["services"]
    assert "profiles" not in services["nats"]
    for node in (2, 3):
        service = services[f"nats-{node}"]
        assert service["profiles"] == ["cluster"]
        assert service["command"] == ["-c", f"/etc/nats/cluster-{node}.conf"]
        assert (ROOT / "deploy" / "nats" / f"cluster-{node}.conf").exists()
    assert services["nats"]["command"][:2] == ["-c", "/etc/nats/${NATS_CONFIG:-single-auth.conf}"]


def test_each_service_mounts_its_own_role_key_only_and_nats_loads_the_grants():
    services = compose()["services"]
    for name, role in [*((s, s) for s in (*SERVICES, "proxy")), ("setup", "admin")]:
        keys = [m for m in services[name]["volumes"] if m.endswith(".nk:ro")]
        assert keys == [f"${{AUTH_DIR:-./auth}}/{role}.nk:/run/aceorch/{role}.nk:ro"], name
        assert services[name]["environment"]["NATS_NKEY"] == f"/run/aceorch/{role}.nk", name
    assert services["setup"]["command"] == ["services.cli", "setup"]
    assert "${AUTH_DIR:-./auth}:/etc/nats-auth:ro" in services["nats"]["volumes"]
    shipped = (ROOT / "deploy" / "nats" / "single-auth.conf").read_text()
    assert "include ./single.conf" in shipped and "include ../nats-auth/auth.conf" in shipped


def test_the_cluster_nodes_load_the_grants_and_the_tls_overlay_gives_each_service_its_own_certificate():
    services = compose()["services"]
    for node in ("nats", "nats-2", "nats-3"):  # deploy/nats/cluster-*.conf read the grants and certificates there
        assert "${AUTH_DIR:-./auth}:/etc/nats-auth:ro" in services[node]["volumes"], node
    overlay = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]
    keyed = {
        name: s["environment"]["NATS_NKEY"] for name, s in services.items() if "NATS_NKEY" in s.get("environment", {})
    }
    assert set(overlay) == set(keyed)
    for name, service in overlay.items():
        role = keyed[name].removeprefix("/run/aceorch/").removesuffix(".nk")
        files = ("ca.pem", f"{role}.pem", f"{role}.key")  # never another role's key, a CA key or the route key
        assert service["volumes"] == [f"${{AUTH_DIR:-./auth}}/tls/{f}:/run/aceorch/tls/{f}:ro" for f in files], name
        assert service["environment"] == {
            "NATS_TLS_CA": "/run/aceorch/tls/ca.pem",
            "NATS_TLS_CERT": f"/run/aceorch/tls/{role}.pem",
            "NATS_TLS_KEY": f"/run/aceorch/tls/{role}.key",
        }, name
