"""A service with a role key binds to what admin made and says so when it is missing; a denial is
logged in words (which role, which subject, what it means), never only as a timeout."""

from __future__ import annotations

import logging

import pytest
from support import create_layout, start_auth_server, wait_until

from shared import auth, names
from shared.bus import BusError, connect
from shared.config import load_config


def role_config(url: str, keys, role: str):
    return load_config({"NATS_URL": url, "NATS_NKEY": str(keys / f"{role}.nk")})


async def test_a_role_key_never_creates_the_layout_and_says_who_does(tmp_path, processes):
    server, keys = start_auth_server(tmp_path, processes)
    with pytest.raises(BusError, match="aceorch setup") as missing:
        await connect(role_config(server.url, keys, "prober"), "prober")
    assert names.EVENTS_STREAM in str(missing.value)
    await create_layout(server.url, keys)
    bus = await connect(role_config(server.url, keys, "prober"), "prober")
    await bus.close()


async def test_a_missing_key_file_or_no_key_is_refused_at_once_with_what_to_do(tmp_path, processes):
    server, keys = start_auth_server(tmp_path, processes)
    config = load_config({"NATS_URL": server.url, "NATS_NKEY": str(tmp_path / "nobody.nk")})
    with pytest.raises(BusError, match="NATS_NKEY"):
        await connect(config, "nobody")  # no such file
    unknown = tmp_path / "proxy.nk"  # a role's name, but a key the server was never told about
    unknown.write_text(auth.new_seed() + "\n")
    with pytest.raises(BusError, match="refused the key"):
        await connect(load_config({"NATS_URL": server.url, "NATS_NKEY": str(unknown)}), "impostor")
    anonymous = load_config({"NATS_URL": server.url, "NATS_CONNECT_TIMEOUT_S": "30"})
    with pytest.raises(BusError, match="refused an anonymous connection"):
        await connect(anonymous, "anonymous")  # refused at once, not after the 30 s timeout


async def test_a_denied_publish_is_logged_in_words(tmp_path, processes, caplog):
    server, keys = start_auth_server(tmp_path, processes)
    await create_layout(server.url, keys)
    bus = await connect(role_config(server.url, keys, "proxy"), "proxy")
    try:
        with caplog.at_level(logging.ERROR, logger="shared.bus"):
            await bus.nc.publish(names.ENGINE_HEALTH, b"{}")
            await bus.nc.flush()
            line = await wait_until(
                lambda: next((r.getMessage() for r in caplog.records if "permission denied" in r.getMessage()), None),
                timeout=5,
                what="the denial in the log",
            )
    finally:
        await bus.close()
    assert "role proxy" in line and "engine.health" in line and "only prober may publish" in line


async def test_a_layout_made_before_direct_gets_stops_the_gateway_until_setup_updates_it(tmp_path, processes):
    """The gateway reads ACE_EVENTS and ACE_HISTORY by direct get: on streams made without `allow_direct`
    (an older layout) it says to run setup, other roles bind as before, and `aceorch setup` fixes it."""
    server, keys = start_auth_server(tmp_path, processes)
    await create_layout(server.url, keys)
    admin = await connect(role_config(server.url, keys, auth.ADMIN), "admin")
    try:
        for stream in (names.EVENTS_STREAM, names.HISTORY_STREAM):
            old = (await admin.js.stream_info(stream)).config
            old.allow_direct = False
            await admin.js.update_stream(old)
    finally:
        await admin.close()
    with pytest.raises(BusError, match="aceorch setup") as outdated:
        await connect(role_config(server.url, keys, "gateway"), "gateway")
    assert names.EVENTS_STREAM in str(outdated.value) and names.HISTORY_STREAM in str(outdated.value)
    await (await connect(role_config(server.url, keys, "prober"), "prober")).close()
    await create_layout(server.url, keys)
    await (await connect(role_config(server.url, keys, "gateway"), "gateway")).close()
