"""deploy/nats/host.conf, the per-host cluster node: valid for nats-server once its three variables are
set, refused without them. The tier that runs it on three simulated hosts is
tests/reliability/test_chaos_partition.py."""

from __future__ import annotations

import os
import subprocess

from nats_cluster import INCLUDED, copy_shipped, make_keys
from support import nats_server_binary

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
