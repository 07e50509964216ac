"""The `docker` runtime: one container per engine, through the docker SDK.

Every SDK call blocks, so each runs in a worker thread (`asyncio.to_thread`),
never on the event loop, and every call is bounded: the client's timeout
(`API_TIMEOUT_S`) fails a call to a daemon that accepts and never answers,
with a clear RuntimeFailure, instead of waiting for ever. An exec is bounded
inside the container too (`timeout -s KILL`), so the cache it empties is not
still being emptied after we report it done.

Every container we labelled is accounted for, whatever its state: running,
restarting and paused ones are live engines (listed, adoptable, removable);
exited and dead ones are removed by `remove_exited`, and so is a `created` one
whose start never came (the daemon was slow, or the start timed out) once it
is older than any live create takes to start it (2 × the client timeout).
Until then it is listed (a start in progress counts against MAX_REPLICAS) and
holds its name and port like any other.
Managed containers carry labels (`aceorch.managed`, `aceorch.name`,
`aceorch.port`, `aceorch.pool`, `aceorch.scope`), so a restarted provisioner
finds them again and never hands out a port an existing engine holds.
`ENGINE_POOL` (label `aceorch.pool`) separates deployments sharing a daemon:
each lists, watches and removes only its own pool's containers, while names
and ports are chosen against every managed container of the daemon.

Networking (`DOCKER_NETWORK`):
- `host`: the container shares the host's network; the engine must listen on
  its own port, so the command carries it (`ENGINE_COMMAND`, default the
  acesim arguments `--port {port} --host {host} --cache-dir {cache_dir}`).
  Reached at ENGINE_HOST:<port>.
- empty (the default bridge): the engine listens on 6878 inside; host port
  <port> on ENGINE_HOST is published to it. Reached at ENGINE_HOST:<port>.
- any other name: the container joins that network (where the services run
  too) and is reached at <container name>:6878; <port> is also published on
  ENGINE_HOST for operators.
ENGINE_HOST (default 127.0.0.1) is, on many hosts, the address the other hosts
reach this one by. Each container keeps the address it was made with in a label
(`aceorch.address`), so changing the setting never misplaces running engines;
containers made before the label existed are on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shlex
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types.daemon import CancellableStream

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
    ExecStillRunning,
    ManagedRuntime,
    RuntimeEvent,
    RuntimeFailure,
    managed_labels,
    port_is_free,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ENGINE_INTERNAL_PORT = 6878
HOST_NETWORK_COMMAND = "--port {port} --host {host} --cache-dir {cache_dir}"
LABEL_ADDRESS = "aceorch.address"  # ENGINE_HOST when the container was made
MANAGED_FILTER = f"{LABEL_MANAGED}=true"
OUR_LABELS = (LABEL_MANAGED, LABEL_NAME, LABEL_PORT, LABEL_POOL, LABEL_SCOPE, LABEL_ADDRESS)
STOP_TIMEOUT_S = 5
API_TIMEOUT_S = 15.0  # any one call to the daemon (a stop gets STOP_TIMEOUT_S on top, from the SDK)
EXEC_GRACE_S = 5.0  # after an exec's own timeout, how long it may take to be reported gone
SIGKILL_EXIT = 128 + 9  # how an exec that `timeout -s KILL` stopped ends
LIST_ATTEMPTS = 3  # a container removed between the SDK's list and its inspect of it fails one attempt
REMOVING_MEMORY_S = 300.0  # far longer than a stop takes plus the event stream's delay
ALIVE = ["running", "restarting", "paused"]  # live engines: found by get(), for exec and removal
LISTED = ["created", *ALIVE]  # what list_managed counts: a created one is a start in progress
SETTLE = ["created", "exited", "dead"]  # left behind: removed by remove_exited (created: once abandoned)
# Runs `sh -c script` under `timeout -s KILL` (coreutils or busybox) when the image has it:
# killing the exec's process group is the only way to stop an exec, the daemon has no call for it.
BOUNDED_EXEC = 'if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL "$0" sh -c "$1"; fi; exec sh -c "$1"'
NAME_ATTEMPTS = 20
EVENTS_RETRY_S = 1.0


class DockerRuntime:
    kind: ManagedRuntime = "docker"

    def __init__(
        self, config: Config, client: docker.DockerClient | None = None, timeout_s: float = API_TIMEOUT_S
    ) -> None:
        self._config = config
        self._client = client
        self._timeout_s = timeout_s
        self._exec_clients: dict[int, docker.DockerClient] = {}  # by read timeout: an exec's output may take long
        self._exec_lock = threading.Lock()
        self._connecting: asyncio.Task[None] | None = None  # owns() learning the daemon's id in the background
        self._scope: str | None = None  # the daemon's id, read on first use
        self._pick = asyncio.Lock()
        self._reserved_names: set[str] = set()  # chosen, container not created yet
        self._reserved_ports: set[int] = set()
        self._removing: dict[str, float] = {}  # our own removals are not deaths: id → when (monotonic)

    # ------------------------------------------------------------ interface

    async def create(self) -> EngineSpec:
        await self._connect()
        for _ in range(NAME_ATTEMPTS):
            name, port = await self._choose()
            try:
                container = await self._call(self._run, name, port)
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
        """Live engines: running, and also restarting or paused ones (they hold a name and a port,
        and an unhealthy one is replaced and removed like any other), and created ones not yet
        abandoned (a start in progress, maybe another process's: it counts against MAX_REPLICAS)."""
        containers = await self._list(LISTED)
        return [self._spec(c) for c in containers]

    async def get(self, container_id: str) -> EngineSpec | None:
        container = await self._container(container_id)
        if container is None or container.status not in ALIVE or not self._in_pool(container):
            return None
        return self._spec(container)

    async def exec_shell(self, engine: EngineSpec, script: str, timeout_s: float = 60) -> ExecResult:
        """Run the script, killed inside the container after `timeout_s`; returns only once it ended.

        If it is still running after `timeout_s + EXEC_GRACE_S` (an image without `timeout`, or a
        daemon that stopped answering), raises ExecStillRunning: what the script works on is not free yet.
        """
        container = await self._container(engine.container_id)
        if container is None:
            raise RuntimeFailure(f"docker: engine {engine.container_name} ({engine.container_id[:12]}) is gone")
        limit = max(1, math.ceil(timeout_s))
        command = ["sh", "-c", BOUNDED_EXEC, str(limit), script]
        env = {"ENGINE_CACHE_DIR": engine.cache_dir}
        what = f"exec in {engine.container_name}"
        started = time.monotonic()
        try:
            exec_id = (await self._call(self._docker.api.exec_create, container.id, command, environment=env))["Id"]
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure(f"{what} failed", exc) from None
        try:
            output = await asyncio.wait_for(self._call(self._exec_start, exec_id, limit), limit + EXEC_GRACE_S)
            state = await self._call(self._docker.api.exec_inspect, exec_id)
        except (TimeoutError, docker.errors.APIError, requests.exceptions.RequestException) as exc:
            await self._still_running(engine, exec_id, limit)  # raises unless the exec is over
            if isinstance(exc, asyncio.TimeoutError):
                raise RuntimeFailure(f"docker: {what} did not finish within {limit}s; it was stopped") from None
            raise self._failure(f"{what} failed", exc) from None
        exit_code = state.get("ExitCode")
        if exit_code == SIGKILL_EXIT and time.monotonic() - started >= limit:
            raise RuntimeFailure(f"docker: {what} did not finish within {limit}s; it was stopped")
        return ExecResult(exit_code=exit_code if exit_code is not None else -1, output=_text(output))

    async def _still_running(self, engine: EngineSpec, exec_id: str, limit: int) -> None:
        """After our wait ran out: raise ExecStillRunning unless the daemon says the exec ended."""
        try:
            state = await self._call(self._docker.api.exec_inspect, exec_id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise ExecStillRunning(
                f"docker: exec in {engine.container_name} did not finish within {limit}s and the daemon cannot "
                f"say whether it still runs ({getattr(exc, 'explanation', None) or exc})"
            ) from None
        if state.get("Running"):
            raise ExecStillRunning(
                f"docker: exec in {engine.container_name} still running after {limit + EXEC_GRACE_S:g}s "
                "(no `timeout` command in the engine image?)"
            )

    async def remove(self, engine: EngineSpec) -> None:
        """Stop (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove; a missing container is fine."""
        await self._connect()
        self._note_removing(engine.container_id)
        try:
            await self._call(self._stop_and_remove, engine.container_id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            self._removing.pop(engine.container_id, None)  # still there: its death is news again
            raise self._failure(f"cannot remove {engine.container_name}", exc) from None

    async def remove_exited(self) -> list[str]:
        """Remove managed containers left behind; their ids.

        Exited or dead ones died while nobody watched. A `created` one is an engine whose start
        never came (a create that timed out after the daemon made it); a young one may be another
        process's create in progress (create and start are two calls), so only those older than
        2 × the client timeout are removed. (Starting them instead would make `aceorch up`'s
        clean-up on exit leave a running engine behind.)
        """
        now = time.time()
        left = [c for c in await self._list(SETTLE) if left_behind(c.status, _created_at(c), now, 2 * self._timeout_s)]
        for container in left:
            if container.status == "created":
                log.warning(
                    "docker: %s was created but never started (a create that timed out?); removing it", container.name
                )
            await self.remove(self._spec(container))
        return [_id(c) for c in left]

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Labelled with this daemon's id. Never blocks: until the id is known (any other call learns it,
        and this one starts learning it in the background), no engine counts as ours."""
        if self._scope is None:
            self._learn_scope()
            return False
        return labels.get(LABEL_SCOPE) == self._scope

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        """Deaths of managed containers, from the daemon's event stream (re-subscribed after errors)."""
        await self._connect()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        pump = _EventPump(self._docker, loop, queue, self._pool_filter())
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
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        for client in [self._client, *self._exec_clients.values()]:
            if client is not None:
                await asyncio.to_thread(client.close)

    # ------------------------------------------------------------ helpers

    @property
    def _docker(self) -> docker.DockerClient:
        """The client. Every public method connects first, so it is set whenever a helper reads it."""
        if self._client is None:
            raise RuntimeFailure("docker: no client (a call that did not connect first)")
        return self._client

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking SDK call in a worker thread (bounded by the client's timeout)."""
        return await asyncio.to_thread(function, *args, **kwargs)

    def _note_removing(self, container_id: str, now: float | None = None) -> None:
        """Remember a removal until its die event has surely come through (then forget it: no growth)."""
        now = time.monotonic() if now is None else now
        for old in [c for c, at in self._removing.items() if now - at > REMOVING_MEMORY_S]:
            del self._removing[old]
        self._removing[container_id] = now

    async def _connect(self) -> None:
        if self._client is None or self._scope is None:
            await asyncio.to_thread(self._connect_blocking)

    def _learn_scope(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script): nothing can be learnt without blocking
            return
        self._connecting = loop.create_task(self._connect_quietly())

    async def _connect_quietly(self) -> None:
        try:
            await self._connect()
        except RuntimeFailure as exc:
            log.warning("docker: cannot tell which engines are ours yet: %s", exc)

    def _connect_blocking(self) -> None:
        """The client, and the daemon's id that scopes our labels (engines of another daemon aren't ours)."""
        try:
            if self._client is None:
                self._client = _from_env(self._timeout_s)
            if self._scope is None:
                info = self._client.info()
                self._scope = f"docker:{info.get('ID') or info.get('Name')}:{self._config.engine_pool}"
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeFailure(
                f"docker: cannot reach the Docker Engine within {self._timeout_s:g}s ({exc}); is dockerd running "
                "and answering?"
            ) from None

    def _exec_start(self, exec_id: str, limit: int) -> bytes:
        """Run the exec and return its output, through a client whose read timeout outlasts `limit` seconds
        (the output may all come at the end). In a worker thread: making a client may ask the daemon."""
        with self._exec_lock:  # worker threads: one client per limit, each closed on close()
            client = self._exec_clients.get(limit)
            if client is None:
                client = _from_env(limit + EXEC_GRACE_S, version=self._docker.api.api_version)
                self._exec_clients[limit] = client
        return client.api.exec_start(exec_id)

    async def _choose(self) -> tuple[str, int]:
        """A name and a port no engine holds, reserved until the container exists."""
        async with self._pick:
            containers = await self._list(None, every_pool=True)  # names and ports are per daemon, in any state
            names = {_name(c) for c in containers} | {c.labels.get(LABEL_NAME, "") for c in containers}
            name = lowest_free_name(names | self._reserved_names)
            taken = {_label_port(c) for c in containers} | self._reserved_ports
            port = next(
                (
                    p
                    for p in free_ports(self._config.engine_port_range, taken)
                    if port_is_free(p, self._config.engine_host)
                ),
                None,
            )
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
            container = self._docker.containers.create(**self._run_arguments(name, port))
        except docker.errors.ImageNotFound:
            raise RuntimeFailure(
                f"docker: image {self._config.engine_image} not found; build it (bash deploy/images.sh acesim) "
                "or set ENGINE_IMAGE"
            ) from None
        try:
            container.start()
            container.reload()
        except (docker.errors.APIError, requests.exceptions.RequestException):
            try:
                container.remove(force=True)  # e.g. its port was taken: don't leave it holding the name
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                log.warning(
                    "docker: cannot remove %s after its failed start (%s); remove_exited settles it",
                    name,
                    getattr(exc, "explanation", None) or exc,
                )
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
            "labels": managed_labels(name, port, self._scope or "", config.engine_pool)
            | {LABEL_ADDRESS: config.engine_host},
            "environment": {
                "ACEORCH_ENGINE_NAME": name,
                "ACEORCH_ENGINE_PORT": str(listen_port),
                "ENGINE_CACHE_DIR": config.engine_cache_dir,
            },
        }
        if template:
            try:
                rendered = render_command(
                    template, host=config.engine_host, port=listen_port, cache_dir=config.engine_cache_dir, name=name
                )
            except ValueError as exc:
                raise RuntimeFailure(f"docker: {exc}") from None
            arguments["command"] = shlex.split(rendered)
        if host_network:
            arguments["network_mode"] = "host"
        else:
            arguments["ports"] = {f"{ENGINE_INTERNAL_PORT}/tcp": (config.engine_host, port)}
            if config.docker_network:
                arguments["network"] = config.docker_network
        if config.engine_memory_limit:
            arguments["mem_limit"] = config.engine_memory_limit
        return arguments

    def _stop_and_remove(self, container_id: str) -> None:
        try:
            container = self._docker.containers.get(container_id)
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT_S)
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            if getattr(exc, "status_code", None) in (404, 409):  # gone, or its removal is already in progress
                return
            raise

    async def _list(self, statuses: list[str] | None, every_pool: bool = False) -> list[Container]:
        """Managed containers in any of `statuses` (None: every state)."""
        await self._connect()
        filters: dict[str, Any] = {"label": MANAGED_FILTER if every_pool else self._pool_filter()}
        if statuses:
            filters["status"] = statuses
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                return await self._call(self._docker.containers.list, all=True, filters=filters)
            except docker.errors.NotFound as exc:
                # The SDK lists, then inspects each container: one removed in between (by a reaper,
                # another replica) fails the whole call, and the next listing no longer has it.
                if attempt < LIST_ATTEMPTS:
                    continue
                raise self._failure("cannot list engine containers", exc) from None
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                raise self._failure("cannot list engine containers", exc) from None
        return []  # not reached: the last attempt returns or raises

    async def _container(self, container_id: str) -> Container | None:
        await self._connect()
        try:
            return await self._call(self._docker.containers.get, container_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise self._failure(f"cannot inspect container {container_id[:12]}", exc) from None

    def _spec(self, container: Container) -> EngineSpec:
        labels = dict(container.labels)
        name = labels.get(LABEL_NAME) or _name(container)
        port = _label_port(container)
        network_mode = container.attrs.get("HostConfig", {}).get("NetworkMode", "")
        if network_mode in ("host", "default", "bridge", ""):
            host, api_port = labels.get(LABEL_ADDRESS) or "127.0.0.1", port
        else:  # a user-defined network: reached by name, inside the network
            host, api_port = _name(container), ENGINE_INTERNAL_PORT
        return EngineSpec(
            container_id=_id(container),
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
        self,
        client: docker.DockerClient,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[dict[str, Any]],
        labels: list[str],
    ) -> None:
        self._client = client
        self._labels = labels
        self._loop = loop
        self._queue = queue
        self._stopping = threading.Event()
        self._stream: CancellableStream[dict[str, Any]] | None = None
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


def _from_env(timeout_s: float, **kwargs: Any) -> docker.DockerClient:
    return docker.from_env(timeout=timeout_s, **kwargs)  # type: ignore[arg-type]  # requests takes float seconds; types-docker says int


def _id(container: Container) -> str:
    """A container the daemon listed or inspected has an id (types-docker allows None for a bare model)."""
    assert container.id is not None, "a listed container without an Id"
    return container.id


def _name(container: Container) -> str:
    """As `_id`: the daemon names every container."""
    assert container.name is not None, "a listed container without a Name"
    return container.name


def _label_port(container: Container) -> int:
    try:
        return int(container.labels.get(LABEL_PORT, "0"))
    except ValueError:
        return 0


def left_behind(status: str, created_at: float | None, now: float, abandoned_after_s: float) -> bool:
    """Whether a managed container, as inspected, is left for `remove_exited` to remove.

    Judged on the status the SDK inspected, not the one the listing filtered on: a container
    listed while `created` may be running by the time it is inspected (its start came between).
    A `created` one counts only once abandoned: a younger one may be a create in progress.
    """
    if status in ("exited", "dead"):
        return True
    return status == "created" and (created_at is None or now - created_at > abandoned_after_s)


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
