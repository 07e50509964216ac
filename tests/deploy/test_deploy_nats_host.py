"""deploy/nats/host.conf, the per-host cluster node: valid for nats-server once its three variables are
set, refused without them. The tier that runs it on three simulated hosts is
tests/reliability/test_chaos_partition.py."""

from __future__ import annotations

import os
import re
import subprocess
from urllib.parse import urlsplit

import yaml
from nats_cluster import INCLUDED, SHIPPED, copy_shipped, make_keys
from support import ROOT, compose_command, nats_server_binary

HOST_ENV = {
    "NATS_NODE_NAME": "rack-1",
    "NATS_ADDRESS": "10.251.0.1",
    "NATS_ROUTES": "[nats-route://10.251.0.1:6222, nats-route://10.251.0.2:6222, nats-route://10.251.0.3:6222]",
}


def check(config, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)],
        env={k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_host_conf_is_valid_with_its_variables_and_refused_without_each(tmp_path):
    make_keys(tmp_path / "nats-auth", ["10.251.0.1"])
    config = copy_shipped(tmp_path, [*INCLUDED, "host.conf"])

    valid = check(config, HOST_ENV)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    for missing in HOST_ENV:
        refused = check(config, {k: v for k, v in HOST_ENV.items() if k != missing})
        assert refused.returncode != 0, f"valid without {missing}"


def readme_many_hosts() -> tuple[dict[str, str], list[str]]:
    """The README's "Many hosts" section: its `.env` for host 1, and its `--tls-host` names."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Many hosts\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    [env_block] = [block for block in blocks if "NATS_ROUTES=" in block]
    env = dict(line.strip().split("=", 1) for line in env_block.splitlines() if "=" in line)
    return env, re.findall(r"--tls-host (\S+)", section)


def test_the_readme_many_hosts_env_runs_host_conf_and_names_what_the_tier_sets(tmp_path):
    env, tls_hosts = readme_many_hosts()
    overlay = yaml.safe_load((ROOT / "deploy" / "docker-compose.host.yml").read_text())["services"]["nats"]
    # The variables host.conf reads, the overlay requires, and the README sets are one set.
    read = set(re.findall(r"\$(\w+)", re.sub(r"(?m)^\s*#.*$", "", (SHIPPED / "host.conf").read_text())))
    assert read == set(overlay["environment"]) == set(HOST_ENV)
    assert read <= set(env)
    assert all(value.startswith(f"${{{name}:?") for name, value in overlay["environment"].items())
    assert overlay["command"] == ["-c", "/etc/nats/host.conf"]
    # The services' settings the partition tier gives each host (test_chaos_partition.start_services).
    assert env["NATS_REPLICAS"] == "3" and env["HOST_ID"] == env["NATS_NODE_NAME"]
    assert env["ENGINE_HOST"] == env["NATS_ADDRESS"] == urlsplit(env["NATS_URL"]).hostname
    assert env["NATS_ADDRESS"] in tls_hosts and len(tls_hosts) == env["NATS_ROUTES"].count("nats-route://")
    # nats-server accepts the node config with the README's values, as written there.
    make_keys(tmp_path / "nats-auth", tls_hosts)
    config = copy_shipped(tmp_path, [*INCLUDED, "host.conf"])
    valid = check(config, {name: env[name] for name in read})
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_compose_merges_the_host_overlay_into_a_node_on_host_conf_and_refuses_it_unset():
    """`docker compose config` (a client we did not write) with the README's three files and `.env`."""
    env, _ = readme_many_hosts()
    files = ["docker-compose.yml", "docker-compose.tls.yml", "deploy/docker-compose.host.yml"]
    argv = [*compose_command(), *(arg for name in files for arg in ("-f", name)), "config"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "HOST_", "ENGINE_"))}
    merged = subprocess.run(argv, cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    assert services["nats"]["command"] == ["-c", "/etc/nats/host.conf"]
    assert {k: services["nats"]["environment"][k] for k in HOST_ENV} == {k: env[k] for k in HOST_ENV}
    for agent in ("provisioner", "janitor", "reaper"):
        settings = services[agent]["environment"]
        assert {k: settings[k] for k in ("HOST_ID", "ENGINE_HOST", "NATS_URL", "NATS_REPLICAS")} == {
            k: env[k] for k in ("HOST_ID", "ENGINE_HOST", "NATS_URL", "NATS_REPLICAS")
        }, agent
    unset = subprocess.run(argv, cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)
    assert unset.returncode != 0 and "NATS_NODE_NAME" in unset.stderr
