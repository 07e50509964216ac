"""The runtime interface: how the orchestrator creates, finds, runs commands in and removes engines.

Two kinds implement it (DESIGN §5): `docker` (one container per engine) and
`local` (one child process per engine). `external` engines have no runtime:
they are registered by address and never created, cleaned or removed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

# Labels every managed engine carries, so a restarted provisioner finds them again.
LABEL_MANAGED = "aceorch.managed"
LABEL_PORT = "aceorch.port"
LABEL_NAME = "aceorch.name"
# Which runtime instance owns the engine (a docker daemon id, or host + state dir):
# a provisioner only declares "gone" the engines its own runtime should see.
LABEL_SCOPE = "aceorch.scope"
# ENGINE_POOL: separates deployments (or test runs) sharing one docker daemon.
LABEL_POOL = "aceorch.pool"


# The runtimes that manage engines (a subset of shared.schemas.Runtime: `external` has none).
ManagedRuntime: TypeAlias = Literal["docker", "local"]


@dataclass(frozen=True)
class EngineSpec:
    """What the runtime knows about an engine it manages."""

    container_id: str  # docker: full container id; local: "local-<port>"; a valid KV key
    container_name: str  # "acestream-N"
    host: str  # address the orchestrator reaches it at
    port: int  # HTTP API port at that address
    runtime: ManagedRuntime
    labels: dict[str, str]
    cache_dir: str  # the cache dir as seen by exec_shell (docker: inside the container)
    created_at: float | None = field(default=None, compare=False)  # epoch seconds, when known


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str  # stdout + stderr, decoded


@dataclass(frozen=True)
class RuntimeEvent:
    kind: Literal["died"]  # the engine exited without being removed through the runtime
    container_id: str


class RuntimeFailure(Exception):
    """A runtime call failed; the message names the engine and the cause."""


class ExecStillRunning(RuntimeFailure):
    """`exec_shell` gave up waiting, and the command may still be running: what it works on is not free."""


@runtime_checkable
class Runtime(Protocol):
    kind: ManagedRuntime

    async def create(self) -> EngineSpec:
        """Pick a name and port, start the engine; does NOT wait until it answers."""

    async def list_managed(self) -> list[EngineSpec]:
        """Every live engine this runtime manages (for adoption and reconciliation)."""

    async def exec_shell(self, engine: EngineSpec, script: str, timeout_s: float = 60) -> ExecResult:
        """Run `sh -c script` where the engine runs (docker exec; local: a host subprocess)."""

    async def remove(self, engine: EngineSpec) -> None:
        """Stop and remove; idempotent (already gone is fine)."""

    async def get(self, container_id: str) -> EngineSpec | None:
        """The live engine with this id, or None."""

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """Engines that died, until the iteration is cancelled."""

    async def remove_exited(self) -> list[str]:
        """Clean up managed engines that exited while nobody watched (docker: also containers created and
        never started); their ids."""

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Whether an engine record with these labels belongs to this runtime instance. Never blocks:
        until the runtime has been reached once (docker: the daemon's id), it says False."""

    async def close(self) -> None:
        """Release clients and background work; engines keep running."""


def managed_labels(name: str, port: int, scope: str, pool: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_NAME: name, LABEL_PORT: str(port), LABEL_SCOPE: scope, LABEL_POOL: pool}


def placeholder(container_id: str, runtime: ManagedRuntime, name: str | None = None) -> EngineSpec:
    """A spec for an engine known only by id (e.g. one that died): enough for `remove`."""
    return EngineSpec(
        container_id=container_id,
        container_name=name or container_id,
        host="",
        port=1,
        runtime=runtime,
        labels={},
        cache_dir="",
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on the port at `host` (an engine that is not ours, or another program)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
