"""The JetStream layout: created idempotently, per-message TTL on, right subjects."""

import pytest

from shared import names
from shared.bus import MIN_SERVER_VERSION, BusError, connect, require_server
from shared.config import load_config


async def test_layout_is_created_once_and_reconnecting_changes_nothing(nats_server):
    config = load_config({"NATS_URL": nats_server.url})
    first = await connect(config, "t1")
    second = await connect(config, "t2")  # a second replica starting at the same time
    try:
        events = await first.js.stream_info(names.EVENTS_STREAM)
        assert sorted(events.config.subjects) == sorted(names.EVENT_SUBJECTS)
        assert events.config.duplicate_window >= 120
        for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET, names.LEASES_BUCKET):
            info = await second.js.stream_info(f"KV_{bucket}")
            assert info.config.allow_msg_ttl and info.config.allow_direct
            assert info.config.max_msgs_per_subject == 1
    finally:
        await first.close()
        await second.close()
    assert not first.lost.is_set(), "closing it ourselves is not losing the connection"


async def test_request_subjects_are_not_captured_by_the_event_stream(nats_server):
    config = load_config({"NATS_URL": nats_server.url})
    bus = await connect(config, "t")
    try:
        events = await bus.js.stream_info(names.EVENTS_STREAM)
        for subject in (names.ENGINE_SELECT, names.ENGINE_IDLE, names.ENGINE_DEMAND, names.ENGINE_CLAIM):
            assert subject not in events.config.subjects
    finally:
        await bus.close()


@pytest.mark.parametrize("version", [(2, 10), (2, 9), (1, 99)])
def test_servers_without_per_message_ttl_are_refused_with_a_clear_message(version):
    with pytest.raises(BusError, match=r"too old: per-message TTL needs nats-server >= 2.11; upgrade it"):
        require_server(version, True, "nats://127.0.0.1:4222")


def test_a_server_without_jetstream_is_refused():
    with pytest.raises(BusError, match="JetStream disabled; start it with -js"):
        require_server(MIN_SERVER_VERSION, False, "nats://127.0.0.1:4222")


def test_current_servers_are_accepted():
    require_server((2, 11), True, "nats://127.0.0.1:4222")
    require_server((3, 0), True, "nats://127.0.0.1:4222")


async def test_reconnects_during_a_round_of_callbacks_fold_into_one_more_round(nats_server):
    import asyncio

    from support import wait_until

    bus = await connect(load_config({"NATS_URL": nats_server.url}), "t")
    running = peak = calls = 0

    async def restart_watch() -> None:
        nonlocal running, peak, calls
        running += 1
        calls += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    try:
        bus.on_reconnect(restart_watch)
        bus._reconnected()
        await wait_until(lambda: running, what="the first round to run")
        bus._reconnected()  # two more reconnects while it runs
        bus._reconnected()
        await wait_until(lambda: bus._rounds.done(), what="the reconnect rounds to finish")
        assert peak == 1, "two rounds of reconnect callbacks ran at once"
        assert calls == 2
    finally:
        await bus.close()
