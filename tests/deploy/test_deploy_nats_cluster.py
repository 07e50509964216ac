"""The shipped three-node NATS cluster (deploy/nats/cluster-*.conf: role grants, TLS on client and
route connections; NATS_REPLICAS=3): one node is SIGKILLed and restarted mid-traffic.

A proxy-like driver keeps selecting engines and publishing stream events the
whole time; the state-keeper (connected to all three URLs with its role key and
certificate) must keep answering and recording, and every acknowledged event
must end up in KV. The cluster lets in no client without a certificate or a key,
and no node without the route certificate.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from itertools import pairwise

import nats
import pytest
from nats.js.api import StreamInfo
from nats_cluster import Cluster
from support import base_env, refusal, wait_for_service, wait_until

from shared import auth, names
from shared.schemas import utcnow

KEEPER_HEALTH = {"HEALTH_CHECK_INTERVAL_S": 300, "HEALTH_CHECK_TIMEOUT_S": 5, "HEALTH_RECHECK_S": 5}

pytestmark = pytest.mark.slow

ENGINES = ("cluster-engine-1", "cluster-engine-2", "cluster-engine-3")
REPLICATED = (
    names.EVENTS_STREAM,
    f"KV_{names.ENGINES_BUCKET}",
    f"KV_{names.STREAMS_BUCKET}",
    f"KV_{names.LEASES_BUCKET}",
)
OP_TIMEOUT_S = 2.0
RETRY_FOR_S = 30.0


class Driver:
    """Start stream i, end stream i-1: each step retried (same Nats-Msg-Id) until acknowledged."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=OP_TIMEOUT_S)
        self.started: dict[str, str] = {}  # stream_id → container_id
        self.ended: set[str] = set()
        self.successes: list[float] = []  # monotonic time of every acknowledged step
        self.retries = 0
        self.rounds = 0

    async def retry(self, what: str, step):
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                result = await step()
                self.successes.append(time.monotonic())
                return result
            except (TimeoutError, nats.errors.Error, LookupError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} kept failing for {RETRY_FOR_S}s: {exc!r}") from None
                self.retries += 1
                await asyncio.sleep(0.2)

    async def select(self, content: str) -> dict:
        msg = await self.nc.request(
            names.ENGINE_SELECT, json.dumps({"content_key": content}).encode(), timeout=OP_TIMEOUT_S
        )
        if (msg.headers or {}).get("Nats-Service-Error-Code"):
            raise LookupError(msg.data.decode())
        return json.loads(msg.data)

    async def publish(self, subject: str, event: dict, msg_id: str) -> None:
        await self.js.publish(subject, json.dumps(event).encode(), headers={"Nats-Msg-Id": msg_id})

    async def round(self) -> None:
        number = self.rounds
        stream_id, content = f"c-stream-{number}", f"channel-{number % 5}"
        choice = await self.retry(f"select for {stream_id}", lambda: self.select(content))
        container_id = choice["engine"]["container_id"]
        started = {
            "stream_id": stream_id,
            "container_id": container_id,
            "content_key": content,
            "reservation_id": choice["reservation_id"],
        }
        await self.retry(f"{stream_id} started", lambda: self.publish(names.STREAM_STARTED, started, f"s-{stream_id}"))
        self.started[stream_id] = container_id
        if number > 0:
            await self.end(f"c-stream-{number - 1}")
        self.rounds += 1

    async def end(self, stream_id: str) -> None:
        ended = {"stream_id": stream_id, "container_id": self.started[stream_id], "reason": "viewer left"}
        await self.retry(f"{stream_id} ended", lambda: self.publish(names.STREAM_ENDED, ended, f"e-{stream_id}"))
        self.ended.add(stream_id)

    async def run_for(self, seconds: float, min_rounds: int = 1) -> int:
        """Rounds completed in at least `seconds` and at least `min_rounds` rounds."""
        before, deadline = self.rounds, time.monotonic() + seconds
        while True:
            await self.round()
            if time.monotonic() >= deadline and self.rounds - before >= min_rounds:
                return self.rounds - before

    def longest_gap(self) -> float:
        return max(b - a for a, b in pairwise(self.successes))


async def quiet(exc: Exception) -> None:
    pass


async def test_the_system_keeps_selecting_and_recording_while_a_nats_node_is_killed(tmp_path, processes):
    cluster = Cluster(tmp_path, processes)
    cluster.start()
    await cluster.create_layout()
    nc = await nats.connect(
        servers=cluster.url.split(","),
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        error_cb=quiet,
        **cluster.connect_options(auth.ADMIN),
    )
    try:
        js = nc.jetstream(timeout=3)
        # Health is reported once, by hand (below): a 300 s interval keeps that verdict fresh for the whole run.
        processes.service(
            "state_keeper", base_env(cluster.url, NATS_REPLICAS=3, MAX_STREAMS_PER_ENGINE=10, **KEEPER_HEALTH)
        )
        await wait_for_service(nc, names.SERVICE_NAME, 1, timeout=60)
        for stream in REPLICATED:
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2, (stream, info.cluster)
        await _register_engines(nc, js)

        driver = Driver(nc)
        await driver.run_for(3)
        leader = (await js.stream_info(names.EVENTS_STREAM)).cluster.leader
        cluster.kill(leader)  # SIGKILL the events stream's leader: the hardest node to lose
        killed_at = len(driver.successes)
        during_outage = await driver.run_for(6, min_rounds=5)
        cluster.start(leader)
        await driver.run_for(4)
        await driver.end(f"c-stream-{driver.rounds - 1}")

        await wait_until(lambda: _all_current(js), timeout=60, interval=0.5, what="the restarted node caught up")
        await wait_until(lambda: _recorded(nc, driver), timeout=60, interval=0.5, what="every acknowledged event in KV")
        # A stream record is written before its engine's: an end whose engine write failed
        # while the node was down reaches the engine on redelivery, so this converges later.
        engines = await wait_until(
            lambda: _engines_without_streams(nc),
            timeout=60,
            interval=0.5,
            what="no engine still listing an ended stream",
        )
        assert sum(1 for e in engines["engines"] if e["last_stream_usage"]) >= 2
    finally:
        await nc.close()
    assert driver.longest_gap() < 20, f"no acknowledged step for {driver.longest_gap():.1f}s"
    assert len(driver.successes) > killed_at
    print(
        f"cluster: {driver.rounds} rounds, {during_outage} with {leader} down, "
        f"{driver.retries} retries, longest gap {driver.longest_gap():.2f}s"
    )


async def _request(nc, subject: str, payload: dict) -> dict:
    msg = await nc.request(subject, json.dumps(payload).encode(), timeout=5)
    assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data
    return json.loads(msg.data)


async def _register_engines(nc, js) -> None:
    for number, container_id in enumerate(ENGINES, start=1):
        registered = {"container_id": container_id, "host": "127.0.0.1", "port": 7000 + number, "runtime": "external"}
        await js.publish(
            names.ENGINE_REGISTERED, json.dumps(registered).encode(), headers={"Nats-Msg-Id": f"r-{container_id}"}
        )
        health = {"container_id": container_id, "ok": True, "checked_at": utcnow().isoformat()}
        await js.publish(names.ENGINE_HEALTH, json.dumps(health).encode(), headers={"Nats-Msg-Id": f"h-{container_id}"})

    async def all_healthy() -> bool:
        listing = await _request(nc, names.ENGINE_LIST, {"health_status": "healthy"})
        return len(listing["engines"]) == len(ENGINES)

    await wait_until(all_healthy, timeout=30, what="three healthy engines")


async def _all_current(js) -> bool:
    for stream in REPLICATED:
        try:
            info: StreamInfo = await js.stream_info(stream)
        except (TimeoutError, nats.errors.Error):
            return False
        replicas = info.cluster.replicas or []
        if info.cluster.leader is None or len(replicas) != 2 or not all(r.current and not r.offline for r in replicas):
            return False
    return True


async def _engines_without_streams(nc) -> dict | None:
    try:
        engines = await _request(nc, names.ENGINE_LIST, {})
    except (TimeoutError, nats.errors.Error):
        return None
    return engines if all(engine["streams"] == [] for engine in engines["engines"]) else None


async def _recorded(nc, driver: Driver) -> bool:
    try:
        listing = await _request(nc, names.STREAM_LIST, {"status": "ended"})
    except (TimeoutError, nats.errors.Error):
        return False
    ended = {record["stream_id"]: record for record in listing["streams"]}
    return set(driver.started) <= set(ended) and all(ended[s]["container_id"] == c for s, c in driver.started.items())


async def test_the_cluster_lets_in_only_clients_with_certificate_and_key_and_nodes_with_the_route_certificate(
    tmp_path, processes
):
    cluster = Cluster(tmp_path, processes)
    cluster.start()
    # The routes formed over TLS: every node has a route to both others.
    await wait_until(lambda: _routed(cluster), timeout=30, interval=0.2, what="every node routed to the two others")

    for port in cluster.route_ports:
        # A node answers a route dial with its INFO, but only after TLS with a certificate of the route CA:
        # a plain dial is hung up on, and so is a role's client certificate (another CA), which would
        # otherwise make its holder a node, past every permission.
        assert _route_dial(cluster, port, "route").startswith(b"INFO "), port
        assert _route_dial(cluster, port, None) == b"", port
        assert _route_dial(cluster, port, "proxy") == b"", port

    url = cluster.url.split(",")[0]
    assert await refusal(url, **cluster.connect_options("proxy")) is None
    assert await refusal(url, **cluster.connect_options("proxy", certificate=False)) is not None
    without_key = await refusal(url, **cluster.connect_options("proxy", key=False))
    assert without_key is not None and auth.refused(without_key), without_key


def _routed(cluster: Cluster) -> bool:
    for name in cluster.names:
        routes = cluster.monitor(name, "/routez").get("routes") or []
        if {route["remote_name"] for route in routes} != set(cluster.names) - {name}:
            return False
    return True


def _route_dial(cluster: Cluster, port: int, certificate: str | None) -> bytes:
    """What a node sends someone dialling its route port with `certificate` (None: plain TCP):
    its INFO line, or b"" when it hangs up (in the TLS handshake or before)."""
    tls = cluster.keys / "tls"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            if certificate is None:
                raw.sendall(b"PING\r\n")  # a node would send CONNECT; the server wants a TLS ClientHello
                return _line(raw)
            context = ssl.create_default_context(cafile=str(tls / "route-ca.pem"))
            context.load_cert_chain(str(tls / f"{certificate}.pem"), str(tls / f"{certificate}.key"))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
                return _line(wrapped)
        except (ssl.SSLError, ConnectionResetError):
            return b""


def _line(sock: socket.socket) -> bytes:
    received = b""
    while not received.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received
