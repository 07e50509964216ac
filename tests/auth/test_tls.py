"""`aceorch auth init --tls` certificates on a real nats-server that demands them (issue 13, TLS part).

A client with the CA, its role's certificate and its role key gets in, and the services' own
connect path (NATS_TLS_* settings) creates and binds like on a plain server; a client without a
certificate is refused. (A client without any TLS settings is not tried: nats-py then hangs in
its own handshake against a server that requires TLS.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT, NatsServer, free_port, refusal

from services.cli.auth import create_layout
from services.cli.certs import TLS_CONFIG
from shared import auth
from shared.bus import connect
from shared.config import ConfigError, load_config


@pytest.fixture
def tls_server(tmp_path, processes) -> tuple[NatsServer, object]:
    keys = tmp_path / "auth"
    made = subprocess.run(
        [sys.executable, "-m", "services.cli", "auth", "init", str(keys), "--tls"], cwd=ROOT, capture_output=True
    )
    assert made.returncode == 0, made.stderr
    config = keys / "server.conf"
    config.write_text(f'include "{auth.SERVER_CONFIG}"\ninclude "{TLS_CONFIG}"\n')
    server = NatsServer(free_port(), tmp_path / "js", processes, extra_args=("-c", str(config)))
    server.start()
    return server, keys


def settings(server: NatsServer, keys, role: str, certificate: bool = True) -> dict[str, str]:
    tls = keys / "tls"
    env = {"NATS_URL": f"tls://127.0.0.1:{server.port}", "NATS_NKEY": str(keys / f"{role}.nk")}
    env["NATS_TLS_CA"] = str(tls / "ca.pem")
    if certificate:
        env |= {"NATS_TLS_CERT": str(tls / f"{role}.pem"), "NATS_TLS_KEY": str(tls / f"{role}.key")}
    return env


async def test_a_role_with_its_certificate_gets_in_and_one_without_is_refused(tls_server):
    server, keys = tls_server
    await create_layout(load_config(settings(server, keys, "admin")))
    bus = await connect(load_config(settings(server, keys, "proxy")), "tls-proxy")
    try:
        assert (await bus.js.stream_info("KV_ace_engines")).config.name == "KV_ace_engines"
    finally:
        await bus.close()
    proxy = settings(server, keys, "proxy", certificate=False)
    without_certificate = await refusal(
        proxy["NATS_URL"], **auth.client_options(proxy["NATS_NKEY"]), **auth.tls_options(proxy["NATS_TLS_CA"])
    )
    assert without_certificate is not None
    with_all = await refusal(
        proxy["NATS_URL"],
        **auth.client_options(proxy["NATS_NKEY"]),
        **auth.tls_options(proxy["NATS_TLS_CA"], str(keys / "tls" / "proxy.pem"), str(keys / "tls" / "proxy.key")),
    )
    assert with_all is None


def test_init_tls_keeps_what_it_made(tls_server):
    _, keys = tls_server
    before = (keys / "tls" / "proxy.pem").read_bytes(), (keys / "tls" / "ca.pem").read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "services.cli", "auth", "init", str(keys), "--tls"], cwd=ROOT, capture_output=True
    )
    assert again.returncode == 0 and b"made none" in again.stdout
    assert ((keys / "tls" / "proxy.pem").read_bytes(), (keys / "tls" / "ca.pem").read_bytes()) == before
    assert (keys / "tls" / "proxy.key").stat().st_mode & 0o077 == 0
    # A directory made before route certificates existed gains them, and nothing else changes.
    for made in ("route-ca", "route"):
        (keys / "tls" / f"{made}.pem").unlink()
    upgraded = subprocess.run(
        [sys.executable, "-m", "services.cli", "auth", "init", str(keys), "--tls"], cwd=ROOT, capture_output=True
    )
    assert upgraded.returncode == 0 and b"made route-ca, route\n" in upgraded.stdout, upgraded.stdout
    assert ((keys / "tls" / "proxy.pem").read_bytes(), (keys / "tls" / "ca.pem").read_bytes()) == before
    assert (keys / "tls" / "route.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "env,problem",
    [
        ({"NATS_TLS_CA": "ca.pem", "NATS_TLS_CERT": "c.pem"}, "NATS_TLS_CERT and NATS_TLS_KEY"),
        ({"NATS_TLS_CERT": "c.pem", "NATS_TLS_KEY": "c.key"}, "needs NATS_TLS_CA"),
    ],
)
def test_half_a_tls_setting_is_refused(env, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(env)
