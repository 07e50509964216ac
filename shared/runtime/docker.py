"""The `docker` runtime: one container per engine, through the docker SDK.

Every SDK call blocks, so each runs in a worker thread (`asyncio.to_thread`).
Managed containers carry labels (`aceorch.managed`, `aceorch.name`,
`aceorch.port`, `aceorch.pool`, `aceorch.scope`), so a restarted provisioner
finds them again and never hands out a port an existing engine holds.
`ENGINE_POOL` (label `aceorch.pool`) separates deployments sharing a daemon:
each lists, watches and removes only its own pool's containers, while names
and ports are chosen against every managed container of the daemon.

Networking (`DOCKER_NETWORK`):
- `host`: the container shares the host's network; the engine must listen on
  its own port, so the command carries it (`ENGINE_COMMAND`, default the
  acesim arguments `--port {port} --host 127.0.0.1 --cache-dir {cache_dir}`).
  Reached at 127.0.0.1:<port>.
- empty (the default bridge): the engine listens on 6878 inside; host port
  <port> on 127.0.0.1 is published to it. Reached at 127.0.0.1:<port>.
- any other name: the container joins that network (where the services run
  too) and is reached at <container name>:6878; <port> is also published on
  127.0.0.1 for operators.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import threading
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from shared.config import Config
from shared.policy.naming import free_ports, lowest_free_name, render_command
from shared.runtime.base import (
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_POOL,
    LABEL_PORT,
    LABEL_SCOPE,
    EngineSpec,
    ExecResult,
    RuntimeEvent,
    RuntimeFailure,
    managed_labels,
    port_is_free,
)

log = logging.getLogger(__name__)

ENGINE_INTERNAL_PORT = 6878
HOST_NETWORK_COMMAND = "--port {port} --host 127.0.0.1 --cache-dir {cache_dir}"
MANAGED_FILTER = f"{LABEL_MANAGED}=true"
OUR_LABELS = (LABEL_MANAGED, LABEL_NAME, LABEL_PORT, LABEL_POOL, LABEL_SCOPE)
STOP_TIMEOUT_S = 5
NAME_ATTEMPTS = 20
EVENTS_RETRY_S = 1.0


class DockerRuntime:
    kind = "docker"

    def __init__(self, config: Config, client: docker.DockerClient | None = None) -> None:
        self._config = config
        self._client = client
        self._scope: str | None = None  # the daemon's id, read on first use
        self._pick = asyncio.Lock()
        self._reserved_names: set[str] = set()  # chosen, container not created yet
        self._reserved_ports: set[int] = set()
        self._removing: set[str] = set()  # our own removals are not deaths

    # ------------------------------------------------------------ interface

    async def create(self) -> EngineSpec:
        await self._connect()
        for _ in range(NAME_ATTEMPTS):
            name, port = await self._choose()
            try:
                container = await asyncio.to_thread(self._run, name, port)
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                if getattr(exc, "status_code", None) == 409:  # the name was taken meanwhile (another process): next one
                    log.info("docker: name %s taken meanwhile, choosing another", name)
                    continue
                raise self._failure(f"cannot start {name} from {self._config.engine_image}", exc) from None
            finally:
                self._reserved_names.discard(name)
                self._reserved_ports.discard(port)
            return self._spec(container)
        raise RuntimeFailure(f"docker: no free acestream-N name after {NAME_ATTEMPTS} attempts")

    async def list_managed(self) -> list[EngineSpec]:
        containers = await self._list(running_only=True)
        return [self._spec(c) for c in containers]

    async def get(self, container_id: str) -> EngineSpec | None:
        container = await self._container(container_id)
        if container is None or container.status != "running" or not self._in_pool(container):
            return None
        return self._spec(container)

    async def exec_shell(self, engine: EngineSpec, script: str, timeout_s: float = 60) -> ExecResult:
        container = await self._container(engine.container_id)
        if container is None:
            raise RuntimeFailure(f"docker: engine {engine.container_name} ({engine.container_id[:12]}) is gone")
        env = {"ENGINE_CACHE_DIR": engine.cache_dir}
        try:
            exit_code, output = await asyncio.wait_for(
                asyncio.to_thread(container.exec_run, ["sh", "-c", script], environment=env), timeout_s
            )
        except asyncio.TimeoutError:
            raise RuntimeFailure(
                f"docker: exec in {engine.container_name} did not finish within {timeout_s}s"
            ) from None
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure(f"exec in {engine.container_name} failed", exc) from None
        return ExecResult(exit_code=exit_code if exit_code is not None else -1, output=_text(output))

    async def remove(self, engine: EngineSpec) -> None:
        """Stop (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove; a missing container is fine."""
        self._removing.add(engine.container_id)
        try:
            await asyncio.to_thread(self._stop_and_remove, engine.container_id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure(f"cannot remove {engine.container_name}", exc) from None

    async def remove_exited(self) -> list[str]:
        """Remove managed containers that exited (died while nobody watched); their ids."""
        containers = await self._list(running_only=False, status="exited") + await self._list(
            running_only=False, status="dead"
        )
        for container in containers:
            await self.remove(self._spec(container))
        return [c.id for c in containers]

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Labelled with this daemon's id. Before any other call, asks the daemon once (blocking, ~1 ms)."""
        if self._scope is None:
            try:
                self._connect_blocking()
            except RuntimeFailure as exc:
                log.warning("docker: cannot tell which engines are ours: %s", exc)
                return False
        return labels.get(LABEL_SCOPE) == self._scope

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        """Deaths of managed containers, from the daemon's event stream (re-subscribed after errors)."""
        await self._connect()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        pump = _EventPump(self._client, loop, queue, self._pool_filter())
        pump.start()
        try:
            while True:
                event = await queue.get()
                container_id = event.get("id") or event.get("Actor", {}).get("ID", "")
                if container_id in self._removing:
                    continue
                yield RuntimeEvent(kind="died", container_id=container_id)
        finally:
            pump.stop()

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    # ------------------------------------------------------------ helpers

    async def _connect(self) -> None:
        if self._client is None or self._scope is None:
            await asyncio.to_thread(self._connect_blocking)

    def _connect_blocking(self) -> None:
        """The client, and the daemon's id that scopes our labels (engines of another daemon aren't ours)."""
        try:
            if self._client is None:
                self._client = docker.from_env()
            if self._scope is None:
                info = self._client.info()
                self._scope = f"docker:{info.get('ID') or info.get('Name')}:{self._config.engine_pool}"
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeFailure(f"docker: cannot reach the Docker Engine ({exc}); is dockerd running?") from None

    async def _choose(self) -> tuple[str, int]:
        """A name and a port no engine holds, reserved until the container exists."""
        async with self._pick:
            containers = await self._list(running_only=False, every_pool=True)  # names and ports are per daemon
            names = {c.name for c in containers} | {c.labels.get(LABEL_NAME, "") for c in containers}
            name = lowest_free_name(names | self._reserved_names)
            taken = {_label_port(c) for c in containers} | self._reserved_ports
            port = next((p for p in free_ports(self._config.engine_port_range, taken) if port_is_free(p)), None)
            if port is None:
                raise RuntimeFailure(
                    f"docker: no free port in ENGINE_PORT_RANGE {self._config.engine_port_range[0]}-"
                    f"{self._config.engine_port_range[1]} ({len(taken)} held by engines)"
                )
            self._reserved_names.add(name)
            self._reserved_ports.add(port)
            return name, port

    def _run(self, name: str, port: int) -> Container:
        """Create, then start (never `run`: it would try to pull a missing image from a registry)."""
        try:
            container = self._client.containers.create(**self._run_arguments(name, port))
        except docker.errors.ImageNotFound:
            raise RuntimeFailure(
                f"docker: image {self._config.engine_image} not found; build it (bash deploy/images.sh acesim) "
                "or set ENGINE_IMAGE"
            ) from None
        try:
            container.start()
            container.reload()
        except docker.errors.APIError:
            container.remove(force=True)  # e.g. its port was taken: don't leave it holding the name
            raise
        return container

    def _run_arguments(self, name: str, port: int) -> dict[str, Any]:
        config = self._config
        host_network = config.docker_network == "host"
        listen_port = port if host_network else ENGINE_INTERNAL_PORT
        template = config.engine_command or (HOST_NETWORK_COMMAND if host_network else "")
        arguments: dict[str, Any] = {
            "image": config.engine_image,
            "name": name,
            "labels": managed_labels(name, port, self._scope or "", config.engine_pool),
            "environment": {
                "ACEORCH_ENGINE_NAME": name,
                "ACEORCH_ENGINE_PORT": str(listen_port),
                "ENGINE_CACHE_DIR": config.engine_cache_dir,
            },
        }
        if template:
            try:
                rendered = render_command(template, port=listen_port, cache_dir=config.engine_cache_dir, name=name)
            except ValueError as exc:
                raise RuntimeFailure(f"docker: {exc}") from None
            arguments["command"] = shlex.split(rendered)
        if host_network:
            arguments["network_mode"] = "host"
        else:
            arguments["ports"] = {f"{ENGINE_INTERNAL_PORT}/tcp": ("127.0.0.1", port)}
            if config.docker_network:
                arguments["network"] = config.docker_network
        if config.engine_memory_limit:
            arguments["mem_limit"] = config.engine_memory_limit
        return arguments

    def _stop_and_remove(self, container_id: str) -> None:
        try:
            container = self._client.containers.get(container_id)
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT_S)
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            if exc.status_code in (404, 409):  # gone, or its removal is already in progress
                return
            raise

    async def _list(self, running_only: bool, status: str | None = None, every_pool: bool = False) -> list[Container]:
        await self._connect()
        filters: dict[str, Any] = {"label": MANAGED_FILTER if every_pool else self._pool_filter()}
        if running_only:
            filters["status"] = "running"
        elif status:
            filters["status"] = status
        try:
            return await asyncio.to_thread(self._client.containers.list, all=not running_only, filters=filters)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure("cannot list engine containers", exc) from None

    async def _container(self, container_id: str) -> Container | None:
        await self._connect()
        try:
            return await asyncio.to_thread(self._client.containers.get, container_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure(f"cannot inspect container {container_id[:12]}", exc) from None

    def _spec(self, container: Container) -> EngineSpec:
        labels = dict(container.labels)
        name = labels.get(LABEL_NAME) or container.name
        port = _label_port(container)
        network_mode = container.attrs.get("HostConfig", {}).get("NetworkMode", "")
        if network_mode in ("host", "default", "bridge", ""):
            host, api_port = "127.0.0.1", port
        else:  # a user-defined network: reached by name, inside the network
            host, api_port = container.name, ENGINE_INTERNAL_PORT
        return EngineSpec(
            container_id=container.id,
            container_name=name,
            host=host,
            port=api_port,
            runtime=self.kind,
            labels={k: labels[k] for k in OUR_LABELS if k in labels},  # not the image's own labels
            cache_dir=self._config.engine_cache_dir,
            created_at=_created_at(container),
        )

    def _in_pool(self, container: Container) -> bool:
        labels = container.labels
        return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_POOL) == self._config.engine_pool

    def _pool_filter(self) -> list[str]:
        return [MANAGED_FILTER, f"{LABEL_POOL}={self._config.engine_pool}"]

    @staticmethod
    def _failure(what: str, exc: Exception) -> RuntimeFailure:
        return RuntimeFailure(f"docker: {what}: {getattr(exc, 'explanation', None) or exc}")


class _EventPump:
    """Reads the daemon's event stream in a thread and hands `die` events to the loop."""

    def __init__(
        self, client: docker.DockerClient, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, labels: list[str]
    ) -> None:
        self._client = client
        self._labels = labels
        self._loop = loop
        self._queue = queue
        self._stopping = threading.Event()
        self._stream = None
        self._thread = threading.Thread(target=self._pump, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # closing a broken stream; nothing left to do
                log.debug("closing docker event stream: %s", exc)

    def _pump(self) -> None:
        since = None
        filters = {"type": "container", "event": "die", "label": self._labels}
        while not self._stopping.is_set():
            try:
                self._stream = self._client.events(decode=True, filters=filters, since=since)
                for event in self._stream:
                    since = event.get("time", since)
                    self._hand_over(event)
            except Exception as exc:  # daemon restarted or connection broke: subscribe again
                if self._stopping.is_set():
                    return
                log.warning("docker: event stream broke (%s); re-subscribing in %.0fs", exc, EVENTS_RETRY_S)
            self._stopping.wait(EVENTS_RETRY_S)

    def _hand_over(self, event: dict[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._stopping.set()


def _label_port(container: Container) -> int:
    try:
        return int(container.labels.get(LABEL_PORT, "0"))
    except ValueError:
        return 0


def _created_at(container: Container) -> float | None:
    raw = container.attrs.get("Created")
    if not raw:
        return None
    # Docker reports nanoseconds (2024-05-01T10:00:00.123456789Z); Python parses microseconds.
    head, _, fraction = raw.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]}+00:00").timestamp()
    except ValueError:
        return None




def _text(output: bytes | None) -> str:
    return (output or b"").decode("utf-8", errors="replace")
