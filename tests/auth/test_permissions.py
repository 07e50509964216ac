"""Every role against a real nats-server loaded with the config `aceorch auth init` writes.

What each role needs works (through the project's own KV, membership, lease and
micro code, so the grants match what the code really sends), and a table of
forbidden actions is refused by the server: each refusal is the server's
permissions violation, and where the action would change something, admin
checks afterwards that nothing changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import api
from nats.js.errors import KeyNotFoundError
from nats.micro import add_service
from nats.micro.service import ServiceConfig
from support import (
    Processes,
    RoleClient,
    collect_dropped_connections,
    connect_as,
    create_layout,
    refusal,
    start_auth_server,
    wait_until,
)

from services.provisioner.endpoint import host_subject
from services.provisioner.starts import StartsBoard
from shared import auth, names
from shared.contract import CHANNELS, ENDPOINTS
from shared.kv import KvView
from shared.lease import claim_epoch
from shared.membership import Membership
from shared.stream_read import read_page

NON_ADMIN = tuple(role for role in auth.ROLES if role != auth.ADMIN)
DENIAL_WAIT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> tuple[str, Path]:
    """One server for the module: starting one per test would cost more than the tests."""
    workdir = tmp_path_factory.mktemp("auth")
    processes = Processes(workdir)
    nats_server, keys = start_auth_server(workdir, processes)
    asyncio.run(create_layout(nats_server.url, keys))
    yield nats_server.url, keys
    processes.stop_all()


@pytest.fixture(autouse=True)
async def _collected() -> AsyncIterator[None]:
    yield
    collect_dropped_connections()  # refused connections' writers, closed while the loop runs


@pytest.fixture
async def admin(server) -> AsyncIterator[RoleClient]:
    client = await connect_as(*server, auth.ADMIN)
    yield client
    await client.nc.close()


async def as_role(server: tuple[str, Path], role: str) -> RoleClient:
    return await connect_as(server[0], server[1], role)


# ------------------------------------------------------------------ who may connect


async def test_a_client_without_a_key_or_with_an_unknown_key_is_refused(server):
    url, _ = server
    anonymous = await refusal(url)
    assert anonymous is not None and auth.refused(anonymous)
    stranger = await refusal(url, nkeys_seed_str=auth.new_seed())
    assert stranger is not None and auth.refused(stranger)
    assert await refusal(url, **auth.client_options(str(server[1] / "proxy.nk"))) is None


# ------------------------------------------------------------------ what each role needs


@pytest.fixture
async def keeper_and_provisioner(server) -> AsyncIterator[None]:
    """The two micro services, each with its own role key, answering every endpoint with `{}`."""
    clients, services = [], []
    for role in ("state-keeper", "provisioner"):
        client = await as_role(server, role)
        service = await add_service(client.nc, ServiceConfig(name=role, version="0.0.1"))
        for endpoint in ENDPOINTS:
            if endpoint.service == role:

                async def answer(request) -> None:
                    await request.respond(b"{}")

                await service.add_endpoint(name=endpoint.key, subject=endpoint.subject, handler=answer)
        await client.nc.flush()  # the server has the subscriptions before another connection asks
        clients.append(client)
        services.append(service)
    yield
    for service in services:
        await service.stop()
    for client in clients:
        assert client.denied == [], client.role
        await client.nc.close()


@pytest.mark.parametrize("role", NON_ADMIN)
async def test_each_role_can_do_what_the_contract_gives_it(server, keeper_and_provisioner, admin, role):
    client = await as_role(server, role)
    nc, js = client.nc, client.nc.jetstream(timeout=2)
    try:
        for endpoint in ENDPOINTS:
            if role in endpoint.requesters:
                assert json.loads((await nc.request(endpoint.subject, b"{}", timeout=2)).data) == {}
        for channel in CHANNELS:
            if role in channel.publishers:
                if channel.kind == "event":
                    await js.publish(channel.subject, b"{}", headers={"Nats-Msg-Id": f"{role}-{channel.key}"})
                else:
                    await nc.publish(channel.subject, b"{}")
            if role in channel.subscribers:
                queue = auth.QUEUE_GROUPS.get(channel.subject, "").replace("*", "host-a")
                await (await nc.subscribe(channel.subject, queue=queue)).unsubscribe()
        if role in ("gateway", auth.OPERATOR):
            await nc.request(f"$SRV.PING.{names.SERVICE_NAME}", b"", timeout=2)
        await nc.flush()
    finally:
        await nc.close()
    assert client.denied == []


@pytest.mark.parametrize("role", [role for role in NON_ADMIN if auth.READS.get(role)])
async def test_readers_watch_and_get_the_buckets_they_read(server, admin, role):
    admin_js = admin.nc.jetstream()
    client = await as_role(server, role)
    js = client.nc.jetstream(timeout=2)
    try:
        for bucket in auth.READS[role]:
            await (await admin_js.key_value(bucket)).put(f"seen-by.{role}", b"1")
            kv = await js.key_value(bucket)
            assert (await kv.get(f"seen-by.{role}")).value == b"1"
            view: KvView[bytes] = KvView(kv, bytes)
            await view.start(timeout=5)
            assert view.get(f"seen-by.{role}").value == b"1"
            await view.stop()
    finally:
        await client.nc.close()
    assert client.denied == []


class _Bus:
    """What Membership needs of a Bus: the connection, JetStream, the leases bucket."""

    def __init__(self, nc: nats.NATS, js, leases) -> None:
        self.nc, self.js, self.leases = nc, js, leases

    def on_reconnect(self, callback) -> None:
        pass


@pytest.mark.parametrize(
    "role,group", [("prober", "prober"), ("proxy", names.PROXY_GROUP), ("provisioner", names.PROVISIONER_GROUP)]
)
async def test_heartbeating_roles_keep_their_membership(server, role, group):
    client = await as_role(server, role)
    js = client.nc.jetstream(timeout=2)
    bus = _Bus(client.nc, js, await js.key_value(names.LEASES_BUCKET))
    member = Membership(bus, group, f"{role}-1", 1.0)  # type: ignore[arg-type]
    try:
        await member.start()
        assert member.members == (f"{role}-1",)
        await member._leave()
    finally:
        await member.stop()
        await client.nc.close()
    assert client.denied == []


@pytest.mark.parametrize(
    "role,job", [("janitor", "janitor-sweep"), ("reaper", "reaper-sweep"), ("provisioner", "provisioner")]
)
async def test_sweeping_roles_take_their_epochs(server, role, job):
    client = await as_role(server, role)
    leases = await client.nc.jetstream(timeout=2).key_value(names.LEASES_BUCKET)
    try:
        assert await claim_epoch(leases, job, 60.0, role)
        assert not await claim_epoch(leases, job, 60.0, role)  # taken: the race's loser reads, and loses
        if role == "provisioner":
            revision = await leases.create("provisioner.lock", b"me", msg_ttl=5)
            await leases.delete("provisioner.lock", last=revision)
            board = StartsBoard(_Bus(client.nc, client.nc.jetstream(timeout=2), leases), "host-a", "p-1")  # type: ignore[arg-type]
            await board.publish(["local-40000"], 0)
            assert await board.elsewhere(()) == ({}, set())  # our own host's: left to the runtime
            await board.publish([], 0)
    finally:
        await client.nc.close()
    assert client.denied == []


async def test_a_provisioner_serves_its_host_and_passes_requests_on_to_another(server):
    """`engine.provision.host.<host>` (services/provisioner/endpoint.py): one provisioner serves it in
    micro's queue group, another one asks it."""
    serving, asking = await as_role(server, "provisioner"), await as_role(server, "provisioner")
    service = await add_service(serving.nc, ServiceConfig(name=names.PROVISIONER_SERVICE, version="0.0.1"))
    try:

        async def answer(request) -> None:
            await request.respond(b"{}")

        subject = host_subject("host-b")
        await service.add_endpoint(name="provision-here", subject=subject, handler=answer)
        # Another connection asks: without the round trip its request can reach the server before
        # this subscription does (no responders; CI ci13).
        await serving.nc.flush()
        assert json.loads((await asking.nc.request(subject, b"{}", timeout=2)).data) == {}
    finally:
        await service.stop()
        await serving.nc.close()
        await asking.nc.close()
    assert serving.denied == [] and asking.denied == []


async def test_the_state_keeper_consumes_events_and_writes_the_records(server, admin):
    client = await as_role(server, "state-keeper")
    js = client.nc.jetstream(timeout=2)
    try:
        await admin.nc.jetstream().publish(names.ENGINE_CLEANED, b"{}")
        sub = await js.pull_subscribe_bind(durable=names.EVENTS_CONSUMER, stream=names.EVENTS_STREAM)
        messages = await sub.fetch(1, timeout=2)
        await messages[0].in_progress()
        await messages[0].ack()
        for bucket in auth.BUCKETS:
            kv = await js.key_value(bucket)
            revision = await kv.put("keeper-wrote", b"1")
            await kv.update("keeper-wrote", b"2", last=revision)
            await kv.delete("keeper-wrote")
    finally:
        await client.nc.close()
    assert client.denied == []


# ------------------------------------------------------------------ what each role may not do


def _admin_only(role: str) -> list[tuple[str, str]]:
    events, durable = names.EVENTS_STREAM, names.EVENTS_CONSUMER
    subjects = [f"$JS.API.STREAM.DELETE.{s}" for s in auth.LAYOUT]
    subjects += [f"$JS.API.STREAM.UPDATE.{events}", "$JS.API.STREAM.CREATE.EVIL", f"$JS.API.STREAM.PURGE.{events}"]
    subjects += [f"$JS.API.CONSUMER.CREATE.{stream}" for stream in (events, names.HISTORY_STREAM)]
    subjects += [f"$JS.API.CONSUMER.CREATE.{events}.evil"]
    subjects += [f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.evil", f"$JS.API.CONSUMER.DELETE.{events}.{durable}"]
    return [("publish", subject) for subject in subjects] + [("subscribe", "_INBOX.>"), ("subscribe", ">")]


FORBIDDEN: dict[str, list[tuple[str, str]]] = {
    "proxy": [
        ("publish", names.ENGINE_HEALTH),
        ("publish", names.ENGINE_REGISTERED),
        ("publish", names.ENGINE_REMOVED),
        ("publish", f"$KV.{names.ENGINES_BUCKET}.acestream-1"),
        ("publish", f"$KV.{names.STREAMS_BUCKET}.s-1"),
        ("publish", f"$KV.{names.LEASES_BUCKET}.epoch.reaper-sweep.1"),
        ("publish", f"$KV.{names.LEASES_BUCKET}.members.prober.p-1"),
        ("subscribe", names.ENGINE_SELECT),
        ("subscribe", f"{names.ENGINE_SELECT} {auth.MICRO_QUEUE}"),
        ("subscribe", names.STREAM_STARTED),
        # Passing a provision request on to a host is between provisioners.
        ("publish", f"{names.ENGINE_PROVISION_HOST}.host-a"),
        ("subscribe", f"{names.ENGINE_PROVISION_HOST}.host-a {auth.MICRO_QUEUE}"),
    ],
    "prober": [
        ("publish", names.STREAM_STARTED),
        ("publish", names.STREAM_ENDED),
        ("publish", names.STREAM_STATS),
        ("publish", f"$KV.{names.ENGINES_BUCKET}.acestream-1"),
        ("publish", f"$KV.{names.LEASES_BUCKET}.members.proxy.x-1"),
        ("publish", f"$JS.API.CONSUMER.CREATE.KV_{names.STREAMS_BUCKET}"),  # a bucket it does not read
    ],
    "gateway": [("publish", f"$KV.{bucket}.x") for bucket in auth.BUCKETS]
    + [("subscribe", f"{names.ENGINE_SELECT} {auth.MICRO_QUEUE}")],
    "operator": [("publish", f"$KV.{bucket}.x") for bucket in auth.BUCKETS] + [("publish", names.ENGINE_HEALTH)],
    "janitor": [("publish", names.ENGINE_REMOVED), ("publish", f"$KV.{names.LEASES_BUCKET}.epoch.reaper-sweep.1")],
    "reaper": [("publish", names.ENGINE_CLEANED), ("publish", f"$KV.{names.ENGINES_BUCKET}.x")],
    "provisioner": [("publish", names.ENGINE_HEALTH), ("publish", f"$KV.{names.STREAMS_BUCKET}.x")],
    "state-keeper": [("publish", names.ENGINE_HEALTH), ("publish", names.STREAM_STARTED)],
}


@pytest.mark.parametrize("role", NON_ADMIN)
async def test_the_server_refuses_each_forbidden_action(server, admin, role):
    other = auth.inbox_prefix(auth.public_key(auth.read_seed(server[1] / "admin.nk")))
    table = [*FORBIDDEN[role], *_admin_only(role), ("subscribe", f"{other}.>")]
    client = await as_role(server, role)
    try:
        for action, subject in table:
            if action == "publish":
                await client.nc.publish(subject, b"{}")
            else:
                target, _, queue = subject.partition(" ")
                await client.nc.subscribe(target, queue=queue)
        await client.nc.flush()
        # The server's error text reaches the client lower-cased.
        wanted = {f"{action} {subject.split(' ')[0]}".lower() for action, subject in table}
        try:
            await wait_until(
                lambda: wanted <= {d.lower() for d in client.denied}, timeout=DENIAL_WAIT_S, what=f"denials for {role}"
            )
        except AssertionError:
            raise AssertionError(
                f"{role} was not refused: {sorted(wanted - {d.lower() for d in client.denied})}"
            ) from None
    finally:
        await client.nc.close()
    streams = [info.config.name async for info in _streams(admin)]
    assert sorted(streams) == sorted(auth.LAYOUT)
    consumers = await admin.nc.jetstream().consumers_info(names.EVENTS_STREAM)
    assert [c.name for c in consumers] == [names.EVENTS_CONSUMER]


async def _streams(admin: RoleClient):
    for info in await admin.nc.jetstream().streams_info():
        yield info


@pytest.mark.parametrize("role", NON_ADMIN)
async def test_no_role_but_admin_can_point_a_push_consumer_or_delete_the_layout(server, admin, role):
    """Through nats-py's own API this time: the call fails, and admin sees nothing changed."""
    client = await as_role(server, role)
    js = client.nc.jetstream(timeout=0.5)
    hostile = api.ConsumerConfig(deliver_subject=names.ENGINE_HEALTH, ack_policy=api.AckPolicy.NONE)
    try:
        for stream in (names.EVENTS_STREAM, names.HISTORY_STREAM):
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_consumer(stream, hostile)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(names.EVENTS_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_key_value(names.ENGINES_BUCKET)
    finally:
        await client.nc.close()
    admin_js = admin.nc.jetstream()
    assert [c.name for c in await admin_js.consumers_info(names.EVENTS_STREAM)] == [names.EVENTS_CONSUMER]
    assert await admin_js.consumers_info(names.HISTORY_STREAM) == []
    await admin_js.stream_info(names.EVENTS_STREAM)
    await admin_js.stream_info(f"KV_{names.ENGINES_BUCKET}")


@pytest.mark.parametrize("role", [role for role in NON_ADMIN if role != "state-keeper"])
async def test_only_the_state_keeper_writes_records(server, admin, role):
    client = await as_role(server, role)
    js = client.nc.jetstream(timeout=0.5)
    try:
        for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET):
            kv = await js.key_value(bucket)
            with pytest.raises(nats.errors.TimeoutError):
                await kv.put(f"forged-by-{role}", b"{}")
    finally:
        await client.nc.close()
    for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET):
        with pytest.raises(KeyNotFoundError):
            await (await admin.nc.jetstream().key_value(bucket)).get(f"forged-by-{role}")


async def test_the_gateway_reads_the_events_and_its_history_by_direct_get_and_creates_no_consumer(server, admin):
    """What the events page and the history replay use (batched direct gets, answered on the gateway's own
    inbox) works; an ordered consumer, a durable, deleting the state-keeper's durable or a stream are refused."""
    admin_js = admin.nc.jetstream()
    await admin_js.publish(names.ENGINE_CLEANED, b"{}")
    await admin_js.publish(names.HISTORY_SAMPLE, b"{}")
    client = await as_role(server, "gateway")
    js = client.nc.jetstream(timeout=0.5)
    try:
        followed = ((names.EVENTS_STREAM, names.ENGINE_CLEANED), (names.HISTORY_STREAM, names.HISTORY_SAMPLE))
        for stream, subject in followed:
            page = await read_page(client.nc, stream, 1, subject)
            assert page.messages and {m.subject for m in page.messages} == {subject}
        assert client.denied == []
        for stream, subject in followed:
            with pytest.raises(nats.errors.TimeoutError):
                await js.subscribe(subject, stream=stream, ordered_consumer=True)
            refused = f"publish $JS.API.CONSUMER.CREATE.{stream}".lower()
            await wait_until(
                lambda: refused in {d.lower() for d in client.denied},  # noqa: B023 (awaited at once)
                timeout=DENIAL_WAIT_S,
                what=f"the server's refusal of a consumer on {stream}",
            )
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(names.EVENTS_STREAM, api.ConsumerConfig(durable_name="evil"))
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_consumer(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(names.HISTORY_STREAM)
    finally:
        await client.nc.close()
    assert [c.name for c in await admin_js.consumers_info(names.EVENTS_STREAM)] == [names.EVENTS_CONSUMER]
    assert await admin_js.consumers_info(names.HISTORY_STREAM) == []
    await admin_js.stream_info(names.HISTORY_STREAM)
