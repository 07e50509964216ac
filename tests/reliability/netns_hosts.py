"""Simulated hosts: Linux network namespaces joined by a bridge, and partitions made with iptables.

`Network.create()` makes, with names unique to this run (the pid), a namespace per
host, one for the bridge and one for an outside client, each host and the client
joined to the bridge by a veth pair, with addresses in SUBNET inside the namespaces
only (the root namespace gets none). `cut(host)` drops everything in and out of that
host's link, both directions; its own processes still reach each other (and its NATS
node) over its own address, as on a machine whose uplink failed. `delete()` removes
every namespace this run made, whatever state the test left them in. Needs root.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.251.0"  # /24, inside this run's namespaces only
CLIENT = "client"
LINK = "eth0"  # the host's end of its veth pair, inside its namespace


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns, iptables)"
    for tool in ("ip", "iptables"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"{tool} is not installed"
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass
class Network:
    hosts: list[str]
    prefix: str = field(default_factory=lambda: f"acep{os.getpid()}")
    made: list[str] = field(default_factory=list)  # namespaces created, for delete()
    cut_hosts: set[str] = field(default_factory=set)

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{250 if host == CLIENT else self.hosts.index(host) + 1}"

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run on `host` (inside its namespace)."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def create(self) -> None:
        bridge = self.namespace("bridge")
        self._add(bridge)
        _run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", bridge, "link", "set", "br0", "up")
        for index, host in enumerate([*self.hosts, CLIENT]):
            ns = self.namespace(host)
            self._add(ns)
            port = f"p{index}"
            # Both ends are made inside their namespaces: no interface ever appears in the root one.
            _run("ip", "link", "add", LINK, "netns", ns, "type", "veth", "peer", "name", port, "netns", bridge)
            _run("ip", "-n", bridge, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", LINK)
            _run("ip", "-n", ns, "link", "set", LINK, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _add(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.made.append(ns)

    def _rules(self, host: str, action: str) -> None:
        ns = self.namespace(host)
        _run("ip", "netns", "exec", ns, "iptables", action, "INPUT", "-i", LINK, "-j", "DROP")
        _run("ip", "netns", "exec", ns, "iptables", action, "OUTPUT", "-o", LINK, "-j", "DROP")

    def cut(self, host: str) -> None:
        """Nothing in or out of `host` over the network, both directions."""
        self._rules(host, "-A")
        self.cut_hosts.add(host)

    def heal(self, host: str) -> None:
        self._rules(host, "-D")
        self.cut_hosts.discard(host)

    def delete(self) -> list[str]:
        """Delete every namespace this run made (processes must be stopped first); what failed."""
        failed = []
        for ns in reversed(self.made):
            done = subprocess.run(["ip", "netns", "delete", ns], capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                failed.append(f"{ns}: {done.stderr.strip()}")
        self.made.clear()
        return failed
