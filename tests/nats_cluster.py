"""The shipped three-node cluster (deploy/nats/cluster-{1,2,3}.conf) on free loopback ports, from the
venv's nats-server: role grants and TLS on client and route connections, as deployed.

The shipped configs and the files they include are copied into WORKDIR/nats with only the
addresses changed: free ports for 4222-4224/6222-6224/8222-8224, WORKDIR/data for /data and
WORKDIR/nats-auth (made by `aceorch auth init --tls`) for /etc/nats-auth, which is where their
relative include of the grants lands anyway. So the scenarios on this cluster prove the files
an operator runs. Services started through `processes` connect with their role's key and
client certificate; the test itself connects as admin (`settings`, `connect_options`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from support import ROOT, Process, Processes, free_port, nats_server_binary, wait_for_port, wait_until

from services.cli.auth import create_layout
from shared import auth
from shared.config import load_config

SHIPPED = ROOT / "deploy" / "nats"
INCLUDED = ("cluster-auth.conf", "cluster-route-tls.conf")
# The shipped configs' ports, per node: client, route, monitor.
SHIPPED_PORTS = [(4222, 6222, 8222), (4223, 6223, 8223), (4224, 6224, 8224)]


def make_keys(keys: Path, tls_hosts: Sequence[str] = ()) -> None:
    """`aceorch auth init KEYS --tls`: role keys, grants, certificates (for `tls_hosts`, else loopback)."""
    hosts = [argument for host in tls_hosts for argument in ("--tls-host", host)]
    made = subprocess.run(
        [sys.executable, "-m", "services.cli", "auth", "init", str(keys), "--tls", *hosts],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr


def copy_shipped(
    workdir: Path,
    names: Sequence[str],
    moved: Mapping[str, str] | None = None,
    data: Path | None = None,
    as_name: str = "",
) -> Path:
    """Shipped configs `names` copied into WORKDIR/nats with /etc/nats-auth at WORKDIR/nats-auth (where
    their relative include of the grants lands anyway), /data at `data` (WORKDIR/data) and the
    addresses in `moved` changed; the last one written as `as_name` on request. The last copy's path."""
    configs = workdir / "nats"
    configs.mkdir(exist_ok=True)
    moved = {"/etc/nats-auth": str(workdir / "nats-auth"), '"/data': f'"{data or workdir / "data"}', **(moved or {})}
    for name in names:
        text = (SHIPPED / name).read_text()
        for old, new in moved.items():
            text = text.replace(old, new)
        assert "/etc/nats-auth" not in text and '"/data/' not in text, f"{name}: an address left unmoved"
        path = configs / (as_name if as_name and name == names[-1] else name)
        path.write_text(text)
    return path


class Cluster:
    """Three nats-server nodes named as in the shipped configs (aceorch-1..3), each with a monitor port."""

    def __init__(self, workdir: Path, processes: Processes) -> None:
        self.workdir = workdir
        self.processes = processes
        self.names = [f"aceorch-{number}" for number in range(1, len(SHIPPED_PORTS) + 1)]
        self.ports = [tuple(free_port() for _ in shipped) for shipped in SHIPPED_PORTS]
        self.client_ports = [ports[0] for ports in self.ports]
        self.route_ports = [ports[1] for ports in self.ports]
        self.http_ports = [ports[2] for ports in self.ports]
        self.nodes: dict[str, Process | None] = {name: None for name in self.names}
        self.keys = workdir / "nats-auth"
        self._make_keys()
        self._write_configs()
        processes.keys, processes.tls = self.keys, self.keys / "tls"

    def _make_keys(self) -> None:
        make_keys(self.keys)

    def _write_configs(self) -> None:
        moved = {}
        for shipped, ours in zip(SHIPPED_PORTS, self.ports, strict=True):
            moved |= {f"127.0.0.1:{a}": f"127.0.0.1:{b}" for a, b in zip(shipped, ours, strict=True)}
        names = (*INCLUDED, *(f"cluster-{number}.conf" for number in range(1, len(self.names) + 1)))
        copy_shipped(self.workdir, names, moved)

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.client_ports)

    def settings(self, role: str = auth.ADMIN, certificate: bool = True, key: bool = True) -> dict[str, str]:
        """A client's settings (shared.config) as `role`; without the certificate or the key on request."""
        tls = self.keys / "tls"
        env = {"NATS_URL": self.url, "NATS_TLS_CA": str(tls / "ca.pem")}
        if key:
            env["NATS_NKEY"] = str(auth.key_path(self.keys, role))
        if certificate:
            env |= {"NATS_TLS_CERT": str(tls / f"{role}.pem"), "NATS_TLS_KEY": str(tls / f"{role}.key")}
        return env

    def connect_options(self, role: str = auth.ADMIN, certificate: bool = True, key: bool = True) -> dict[str, object]:
        """`nats.connect` keyword arguments but the servers (`url`) for the same client."""
        env = self.settings(role, certificate, key)
        return {
            **auth.client_options(env.get("NATS_NKEY", "")),
            **auth.tls_options(env["NATS_TLS_CA"], env.get("NATS_TLS_CERT", ""), env.get("NATS_TLS_KEY", "")),
        }

    def start(self, name: str | None = None) -> None:
        for node in [name] if name else self.names:
            config = self.workdir / "nats" / f"cluster-{self.names.index(node) + 1}.conf"
            self.nodes[node] = self.processes.start(node, [nats_server_binary(), "-c", str(config)])
        for node in [name] if name else self.names:
            wait_for_port(self.client_ports[self.names.index(node)], timeout=20)

    async def create_layout(self, replicas: int = 3) -> None:
        """What `aceorch setup` does on a fresh cluster, once it has a meta leader: the stream, buckets
        and durable, replicated; services with role keys only bind to them."""
        await wait_until(self.meta_leader, timeout=60, interval=0.2, what="a JetStream meta leader")
        await create_layout(load_config(self.settings(auth.ADMIN) | {"NATS_REPLICAS": str(replicas)}))

    def kill(self, name: str) -> None:
        process = self.nodes[name]
        assert process is not None
        process.kill()

    def monitor(self, name: str, path: str) -> dict:
        port = self.http_ports[self.names.index(name)]
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).json()

    def alive(self) -> list[str]:
        return [name for name, process in self.nodes.items() if process is not None and process.alive()]

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as a live node reports it (None while an election runs)."""
        for name in self.alive():
            try:
                leader = self.monitor(name, "/jsz").get("meta_cluster", {}).get("leader")
            except (httpx.HTTPError, ValueError):
                continue
            if leader in self.alive():
                return leader
        return None

    def healthy(self, name: str) -> bool:
        """The node's JetStream is up and current with the cluster (its /healthz says ok)."""
        try:
            port = self.http_ports[self.names.index(name)]
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
