"""Roles and grants as data (shared/auth.py): consistent with the contract, closed to what only admin
may do, private inboxes; key files made once and never overwritten. No server here (tests/auth has it)."""

from __future__ import annotations

import stat

import pytest

from shared import auth, names
from shared.contract import CHANNELS, ENDPOINTS

KEY = "U" + "A" * 55
OTHER_KEY = "U" + "B" * 55
NON_ADMIN = [role for role in auth.ROLES if role != auth.ADMIN]


@pytest.mark.parametrize(
    "pattern,subject,expected",
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.b", False),
        ("*", "a", True),
    ],
)
def test_subject_matching(pattern, subject, expected):
    assert auth.matches(pattern, subject) is expected


@pytest.mark.parametrize("role", NON_ADMIN)
def test_grants_follow_the_contract(role):
    granted = auth.grants(role, KEY)
    for channel in CHANNELS:
        assert auth.permits(granted, "publish", channel.subject) is (role in channel.publishers), channel.subject
        queue = auth.QUEUE_GROUPS.get(channel.subject, "").replace("*", "host-a")
        hears = auth.permits(granted, "subscribe", channel.subject, queue)
        assert hears is (role in channel.subscribers), channel.subject
    for endpoint in ENDPOINTS:
        assert auth.permits(granted, "publish", endpoint.subject) is (role in endpoint.requesters), endpoint.subject
        serves = auth.permits(granted, "subscribe", endpoint.subject, auth.MICRO_QUEUE)
        assert serves is (role == endpoint.service), endpoint.subject
        # Pinned to micro's queue group: a plain subscriber could not take requests, even as the service.
        assert not auth.permits(granted, "subscribe", endpoint.subject)
        assert not auth.permits(granted, "subscribe", endpoint.subject, "mine")


@pytest.mark.parametrize("role", NON_ADMIN)
def test_only_admin_creates_changes_or_deletes_the_layout(role):
    granted = auth.grants(role, KEY)
    events, durable = names.EVENTS_STREAM, names.EVENTS_CONSUMER
    for subject in [
        *(f"$JS.API.STREAM.{verb}.{stream}" for verb in ("CREATE", "UPDATE", "DELETE") for stream in _streams()),
        f"$JS.API.CONSUMER.CREATE.{events}",
        f"$JS.API.CONSUMER.CREATE.{names.HISTORY_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{names.HISTORY_STREAM}.x.engine.health",
        f"$JS.API.CONSUMER.CREATE.{events}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{events}.x.engine.health",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{durable}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.KV_{names.ENGINES_BUCKET}.x",
        f"$JS.API.CONSUMER.DELETE.{events}.{durable}",
        f"$JS.API.STREAM.PURGE.{events}",
    ]:
        assert not auth.permits(granted, "publish", subject), subject
    admin = auth.grants(auth.ADMIN, KEY)
    assert auth.permits(admin, "publish", f"$JS.API.STREAM.DELETE.{events}")


def test_only_the_gateway_reads_the_events_and_the_history_and_only_by_direct_get():
    for role in NON_ADMIN:
        granted = auth.grants(role, KEY)
        for stream in (names.EVENTS_STREAM, names.HISTORY_STREAM):
            reads = auth.permits(granted, "publish", f"$JS.API.DIRECT.GET.{stream}")
            assert reads is (role == "gateway"), (role, stream)
            assert not auth.permits(granted, "publish", f"$JS.API.CONSUMER.CREATE.{stream}"), (role, stream)


def _streams() -> list[str]:
    return list(auth.LAYOUT)


@pytest.mark.parametrize("role", NON_ADMIN)
def test_the_records_are_written_by_the_state_keeper_alone(role):
    granted = auth.grants(role, KEY)
    for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET):
        assert auth.permits(granted, "publish", f"$KV.{bucket}.acestream-1") is (role == "state-keeper")


def test_each_role_writes_only_its_own_leases():
    def writes(role: str, key: str) -> bool:
        return auth.permits(auth.grants(role, KEY), "publish", f"$KV.{names.LEASES_BUCKET}.{key}")

    assert writes("prober", "members.prober.p-1") and not writes("prober", "members.proxy.p-1")
    assert writes("proxy", "members.proxy.p-1") and not writes("proxy", "epoch.janitor-sweep.7")
    assert writes("janitor", "epoch.janitor-sweep.7") and not writes("janitor", "epoch.reaper-sweep.7")
    assert writes("provisioner", "provisioner.lock") and not writes("provisioner", "removed.acestream-1")
    assert writes("provisioner", "members.provisioner.p-1") and writes("provisioner", "starting.host-a.p-1")
    assert not writes("reaper", "starting.host-a.p-1") and not writes("provisioner", "members.prober.p-1")
    assert not any(writes(role, "anything") for role in ("gateway", auth.OPERATOR))


def test_watches_only_on_buckets_the_role_reads():
    prober = auth.grants("prober", KEY)
    assert auth.permits(prober, "publish", f"$JS.API.CONSUMER.CREATE.KV_{names.ENGINES_BUCKET}")
    assert not auth.permits(prober, "publish", f"$JS.API.CONSUMER.CREATE.KV_{names.STREAMS_BUCKET}")


def test_replies_go_to_a_private_inbox_per_key():
    proxy = auth.grants("proxy", KEY)
    assert auth.permits(proxy, "subscribe", f"{auth.inbox_prefix(KEY)}.abc")
    assert not auth.permits(proxy, "subscribe", f"{auth.inbox_prefix(OTHER_KEY)}.abc")
    assert not auth.permits(proxy, "subscribe", "_INBOX.abc")
    assert not auth.permits(proxy, "subscribe", ">")
    # Only the micro services answer requests (a reply to whatever inbox asked).
    assert [role for role in auth.ROLES if auth.grants(role, KEY).allow_responses] == [
        "state-keeper",
        "provisioner",
        auth.ADMIN,
    ]


def test_unknown_roles_are_refused():
    with pytest.raises(auth.AuthError, match="unknown role 'root'"):
        auth.grants("root", KEY)
    with pytest.raises(auth.AuthError, match="root"):
        auth.server_config({"root": KEY})


def test_the_server_config_has_one_user_per_role_and_no_anonymous_access():
    keys = {role: f"U{index:055d}" for index, role in enumerate(auth.ROLES)}
    text = auth.server_config(keys)
    assert all(text.count(f'nkey: "{key}"') == 1 for key in keys.values())
    assert "no_auth_user" not in text and "password" not in text


def test_keys_are_made_once_private_and_never_overwritten(tmp_path):
    directory = tmp_path / "auth"
    keys, created = auth.init(directory)
    assert created == list(auth.ROLES) and set(keys) == set(auth.ROLES)
    assert len(set(keys.values())) == len(auth.ROLES)
    for role in auth.ROLES:
        path = auth.key_path(directory, role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert auth.public_key(auth.read_seed(path)) == keys[role]
    proxy = auth.key_path(directory, "proxy")
    before = proxy.read_text()
    auth.key_path(directory, "gateway").unlink()
    again, created_again = auth.init(directory)
    assert created_again == ["gateway"]
    assert proxy.read_text() == before and again["proxy"] == keys["proxy"]
    assert again["gateway"] != keys["gateway"]
    assert f'nkey: "{again["gateway"]}"' in (directory / auth.SERVER_CONFIG).read_text()


def test_a_damaged_key_file_is_named(tmp_path):
    path = tmp_path / "proxy.nk"
    path.write_text("not a seed\n")
    with pytest.raises(auth.AuthError, match="proxy.nk"):
        auth.read_seed(path)
    with pytest.raises(auth.AuthError, match="proxy.nk"):
        auth.client_options(str(path))
    assert auth.role_of(path) == "proxy"
    assert auth.role_of(tmp_path / "someone.nk") == ""


@pytest.mark.parametrize(
    "message,action,subject,words",
    [
        (
            'nats: permissions violation for publish to "$kv.ace_engines.acestream-1"',
            "publish",
            "ace_engines",
            "bucket",
        ),
        ('nats: Permissions Violation for Subscription to "engine.select"', "subscribe", "engine.select", "queue"),
        ('nats: permissions violation for publish to "engine.health"', "publish", "engine.health", "prober"),
        ('nats: permissions violation for publish to "$js.api.stream.delete.ace_events"', "publish", "admin", "admin"),
    ],
)
def test_a_denial_is_explained_in_words(message, action, subject, words):
    denied = auth.violation(message)
    assert denied is not None and denied.action == action
    line = auth.explain(denied, "proxy")
    assert "role proxy" in line and subject in line.lower() and words in line


def test_other_errors_are_not_denials():
    assert auth.violation("nats: stale connection") is None


def test_the_grants_table_names_every_role_and_key():
    keys = {role: f"U{index:055d}" for index, role in enumerate(auth.ROLES)}
    table = auth.grants_table(keys)
    assert all(role in table and key in table for role, key in keys.items())
    detail = auth.grants_table(keys, only="proxy")
    assert f"$KV.{names.LEASES_BUCKET}.members.proxy.>" in detail and "$KV.ace_engines" not in detail


def test_each_hosts_janitors_hear_engine_idle_in_a_group_of_their_own():
    granted = auth.grants("janitor", KEY)
    for queue in ("janitor.host-a", "janitor.rack_2_eu"):
        assert auth.permits(granted, "subscribe", names.ENGINE_IDLE, queue)
    for queue in ("", "janitor", "janitor.a.b", "state-keeper"):
        assert not auth.permits(granted, "subscribe", names.ENGINE_IDLE, queue), queue
