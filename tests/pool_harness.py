"""Real parts for the janitor and reaper tests.

A `Pool` runs a state-keeper and the prober against the test's nats-server,
starts acesim engines through shared.runtime's local runtime (the very code
the provisioner uses, in one shared ENGINE_STATE_DIR, so the janitor and the
reaper find, exec into and remove them), plays streams on them like a proxy
does, and records what the services did: every claim seen in `ace_engines`,
every event, and the engine count sampled throughout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE
from support import base_env, free_port_range, request_json, wait_for_port, wait_for_service, wait_until

from shared import names
from shared.config import load_config
from shared.runtime import EngineSpec, make_runtime
from shared.schemas import (
    EngineHealth,
    EngineRecord,
    EngineRegistered,
    StreamEnded,
    StreamStarted,
    decode_engine,
    encode,
    utcnow,
)


@dataclass(frozen=True)
class ClaimSeen:
    at: float  # time.time() when the watch delivered it
    container_id: str
    purpose: str
    holder: str
    claim_id: str


@dataclass
class Recorder:
    """Everything the services did that a test asserts on."""

    claims: list[ClaimSeen] = field(default_factory=list)
    events: list[tuple[float, str, dict]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    records: dict[str, EngineRecord] = field(default_factory=dict)
    on_claim: list[Callable[[ClaimSeen], None]] = field(default_factory=list)  # called as claims appear
    duplicates: int = 0  # events published again with the same Nats-Msg-Id

    def of(self, subject: str) -> list[dict]:
        return [payload for _, s, payload in self.events if s == subject]

    def per_engine(self, subject: str) -> Counter:
        return Counter(payload["container_id"] for payload in self.of(subject))


class Pool:
    def __init__(self, nats_url: str, processes, nc: nats.NATS, workdir: Path, **settings: object) -> None:
        self.nats_url = nats_url
        self.processes = processes
        self.nc = nc
        self.js = nc.jetstream()
        first = free_port_range(40)
        self.settings = {
            "ENGINE_RUNTIME": "local",
            "ENGINE_STATE_DIR": str(workdir / "engines"),
            "ENGINE_PORT_RANGE": f"{first}-{first + 39}",
            "ENGINE_GRACE_PERIOD_S": 2,
            "RESERVATION_TTL_S": 5,
            "CLAIM_TTL_S": 10,
            **settings,
        }
        self.runtime = make_runtime(load_config(self.env()))
        self.recorder = Recorder()
        self.http = httpx.AsyncClient(timeout=5)
        self._tasks: list[asyncio.Task] = []
        self._services: list = []
        self._msg_ids: set[str] = set()
        self._subs: list = []
        self._watcher = None

    def env(self, **overrides: object) -> dict[str, str]:
        return base_env(self.nats_url, **{**self.settings, **overrides})

    # ------------------------------------------------------------ services

    async def start(self, prober: bool = True) -> None:
        self.processes.service("state_keeper", self.env())
        await wait_for_service(self.nc, "state-keeper")
        if prober:
            self.processes.service("prober", self.env())
        await self._record()

    def service(self, module: str, **overrides: object):
        process = self.processes.service(module, self.env(**overrides))
        self._services.append(process)
        return process

    async def sweeps_done(self, job: str, count: int, timeout: float = 30) -> None:
        """Until `count` sweeps of `job` begun after this call have finished (one replica of it running).

        A replica claims `epoch.<job>.<host>.<n>` just before it sweeps and sweeps one epoch at a time, so
        the claim of epoch n + 1 says the sweep of epoch n is over: a "nothing happened" check made
        after this knows the sweeps really ran, which no sleep can say.
        """
        leases = await self.js.key_value(names.LEASES_BUCKET)
        prefix = f"epoch.{job}."

        async def latest() -> int:
            try:
                keys = await leases.keys()
            except NoKeysError:
                return -1
            # `epoch.<job>.<host>.<n>`: each host sweeps its own engines (the epoch is the last token).
            return max((int(k.rsplit(".", 1)[1]) for k in keys if k.startswith(prefix)), default=-1)

        async def latest_at_least(epoch: int) -> bool:
            return await latest() >= epoch

        await wait_until(lambda: latest_at_least(0), timeout=timeout, what=f"a first {job} sweep")
        first = await latest()
        await wait_until(lambda: latest_at_least(first + count + 1), timeout=timeout, what=f"{count} {job} sweeps")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subs:
            await sub.unsubscribe()
        if self._watcher is not None:
            await self._watcher.stop()
        await self.http.aclose()
        # Janitors and reapers first, so none removes an engine while we do.
        for process in reversed(self._services):
            await asyncio.to_thread(process.stop)
        for spec in await self.runtime.list_managed():
            await self.runtime.remove(spec)
        await self.runtime.close()

    # ------------------------------------------------------------ engines

    async def create_engines(self, count: int, host_id: str | None = None) -> list[EngineSpec]:
        """Start `count` acesim engines and register them like the provisioner (of `host_id`) does."""
        specs = list(await asyncio.gather(*(self.runtime.create() for _ in range(count))))
        await asyncio.gather(*(asyncio.to_thread(wait_for_port, spec.port, 30) for spec in specs))
        for spec in specs:
            event = EngineRegistered(
                container_id=spec.container_id,
                host=spec.host,
                port=spec.port,
                container_name=spec.container_name,
                runtime=self.runtime.kind,
                labels=spec.labels,
                host_id=host_id,
            )
            await self.js.publish(names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return specs

    async def register_external(self, host: str, port: int, container_id: str) -> None:
        event = EngineRegistered(container_id=container_id, host=host, port=port, container_name=container_id)
        await self.js.publish(names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def report_healthy(self, container_id: str) -> None:
        event = EngineHealth(container_id=container_id, ok=True, checked_at=utcnow())
        await self.js.publish(names.ENGINE_HEALTH, encode(event), headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def engines(self) -> list[dict]:
        body, _ = await request_json(self.nc, names.ENGINE_LIST, {})
        return body["engines"]

    async def engine(self, container_id: str) -> dict | None:
        body, headers = await request_json(self.nc, names.ENGINE_GET, {"container_id": container_id})
        return None if headers.get("Nats-Service-Error-Code") else body

    async def wait_healthy(self, count: int, timeout: float = 30) -> list[dict]:
        async def healthy():
            engines = [e for e in await self.engines() if e["health_status"] == "healthy"]
            return engines if len(engines) >= count else None

        return await wait_until(healthy, timeout=timeout, interval=0.1, what=f"{count} healthy engines")

    async def sim_state(self, port: int) -> dict:
        return (await self.http.get(f"http://127.0.0.1:{port}/__sim/state")).json()

    # ------------------------------------------------------------ streams, as a proxy plays them

    async def select(self, content_key: str | None = None) -> tuple[dict, dict]:
        payload = {} if content_key is None else {"content_key": content_key, "key_type": "content_id"}
        return await request_json(self.nc, names.ENGINE_SELECT, payload)

    async def started(self, stream_id: str, container_id: str, reservation_id: str | None = None, **fields) -> None:
        event = StreamStarted(
            stream_id=stream_id, container_id=container_id, reservation_id=reservation_id, started_at=utcnow(), **fields
        )
        await self.js.publish(names.STREAM_STARTED, encode(event), headers={"Nats-Msg-Id": f"started-{stream_id}"})

    async def ended(self, stream_id: str, container_id: str, reason: str = "test") -> None:
        event = StreamEnded(stream_id=stream_id, container_id=container_id, reason=reason, ended_at=utcnow())
        await self.js.publish(names.STREAM_ENDED, encode(event), headers={"Nats-Msg-Id": f"ended-{stream_id}"})

    async def play(self, engine: dict, content: str, seconds: float = 2.0, reservation_id: str | None = None) -> dict:
        """Start a stream on an engine, read its playback URL for `seconds`, stop the session.

        Returns the engine's getstream response; the stream is still `started`
        in the records (call `ended` to end it).
        """
        base = f"http://{engine['host']}:{engine['port']}"
        reply = (await self.http.get(f"{base}/ace/getstream", params={"id": content, "format": "json"})).json()
        response = reply["response"]
        await self.started(
            f"stream-{content}",
            engine["container_id"],
            reservation_id,
            content_key=content,
            key_type="content_id",
            playback_session_id=response["playback_session_id"],
            stat_url=response["stat_url"],
            command_url=response["command_url"],
            is_live=True,
        )
        deadline = time.monotonic() + seconds
        async with self.http.stream("GET", response["playback_url"]) as playback:
            async for _ in playback.aiter_bytes():
                if time.monotonic() >= deadline:
                    break
        await self.http.get(response["command_url"], params={"method": "stop"})
        return response

    # ------------------------------------------------------------ recording

    async def _record(self) -> None:
        for subject in (
            names.ENGINE_CLEANED,
            names.ENGINE_REMOVED,
            names.ENGINE_REGISTERED,
            names.STREAM_STARTED,
            names.STREAM_ENDED,
            names.ENGINE_IDLE,
            names.ENGINE_DEMAND,
        ):
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_event))
        kv = await self.js.key_value(names.ENGINES_BUCKET)
        self._watcher = await kv.watchall()
        self._tasks.append(asyncio.get_running_loop().create_task(self._follow_claims()))

    async def _on_event(self, msg) -> None:
        # A publish retried after a lost ack reaches core subscribers twice (JetStream keeps one): keep one.
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        if msg_id is not None:
            if msg_id in self._msg_ids:
                self.recorder.duplicates += 1
                return
            self._msg_ids.add(msg_id)
        self.recorder.events.append((time.time(), msg.subject, json.loads(msg.data)))

    async def _follow_claims(self) -> None:
        seen: set[str] = set()
        async for entry in self._watcher:
            if entry is None:
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or entry.value is None:
                continue
            record = decode_engine(entry.value)
            self.recorder.records[record.container_id] = record
            if record.claim is not None and record.claim.claim_id not in seen:
                seen.add(record.claim.claim_id)
                claim = record.claim
                seen_claim = ClaimSeen(time.time(), record.container_id, claim.purpose, claim.holder, claim.claim_id)
                self.recorder.claims.append(seen_claim)
                for callback in self.recorder.on_claim:
                    callback(seen_claim)

    def sample_counts(self, every_s: float = 0.05) -> None:
        """Poll engine.list every `every_s` and keep the managed-engine counts."""

        async def sample() -> None:
            while True:
                try:
                    engines = await self.engines()
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    pass
                else:
                    self.recorder.counts.append(sum(e["runtime"] != "external" for e in engines))
                await asyncio.sleep(every_s)

        self._tasks.append(asyncio.get_running_loop().create_task(sample()))


@pytest.fixture
async def pools(nats_server, processes, nc, tmp_path):
    made: list[Pool] = []

    async def make(prober: bool = True, **settings) -> Pool:
        pool = Pool(nats_server.url, processes, nc, tmp_path, **settings)
        made.append(pool)
        await pool.start(prober=prober)
        return pool

    yield make
    for pool in made:
        await pool.close()
