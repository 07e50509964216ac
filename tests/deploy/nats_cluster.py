"""A three-node NATS JetStream cluster on loopback ports, from the venv's nats-server.

The generated configs have the shape of deploy/nats/cluster-*.conf, with free
ports and per-test store dirs, so tests can run next to a real deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from support import Process, Processes, free_port, nats_server_binary, wait_for_port

CONFIG = """\
server_name: {name}
listen: 127.0.0.1:{client_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: aceorch-test
  listen: 127.0.0.1:{route_port}
  routes: [
{routes}
  ]
}}
"""


@dataclass
class Node:
    name: str
    client_port: int
    route_port: int
    config: Path
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class Cluster:
    workdir: Path
    processes: Processes
    nodes: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def write_configs(self, size: int = 3) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        routes = "\n".join(f"    nats-route://127.0.0.1:{route}" for _, route in ports)
        for index, (client, route) in enumerate(ports, start=1):
            name = f"aceorch-test-{index}"
            config = self.workdir / f"{name}.conf"
            store = self.workdir / name
            config.write_text(
                CONFIG.format(name=name, client_port=client, route_port=route, store=store, routes=routes)
            )
            self.nodes.append(Node(name, client, route, config))

    def start(self, node: Node) -> None:
        node.process = self.processes.start(node.name, [nats_server_binary(), "-c", str(node.config)])
        wait_for_port(node.client_port, timeout=20)

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def kill(self, node: Node) -> None:
        assert node.process is not None
        node.process.kill()
