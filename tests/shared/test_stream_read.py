"""Following a stream by batched direct gets (no consumer), against a real nats-server: paging, filters
merged in stream order, gaps left by max-age, an empty stream, a time to start from, a server restart."""

from __future__ import annotations

from datetime import timedelta

import nats
import pytest
from nats.js import api
from support import wait_until

from shared.stream_read import Page, Stored, StreamFollower, StreamReadError, merge, read_page


async def stream(nc, name: str = "T", **options) -> None:
    config = api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"], allow_direct=True, **options)
    await nc.jetstream().add_stream(config)


async def publish(nc, subjects: list[str]) -> list[int]:
    js = nc.jetstream()
    return [(await js.publish(subject, subject.encode())).seq for subject in subjects]


def follower(nc, got: list[Stored], subjects=("t.a", "t.b"), **options) -> StreamFollower:
    return StreamFollower(nc, "T", list(subjects), got.append, **options)


async def test_pages_of_two_filters_arrive_once_in_stream_order_without_the_rest(nc):
    await stream(nc)
    # Mostly noise (as engine.health is on ACE_EVENTS), and one filter far busier than the other.
    subjects = [["t.noise", "t.noise", "t.a", "t.noise", "t.a", "t.a"][i % 6] for i in range(60)] + ["t.b"]
    seqs = await publish(nc, subjects)
    got: list[Stored] = []
    reader = follower(nc, got, batch=4)  # pages of 4: twelve rounds, each one page per filter
    assert await reader.catch_up() == 31
    wanted = [seq for seq, subject in zip(seqs, subjects, strict=True) if subject != "t.noise"]
    assert [m.seq for m in got] == wanted
    assert {m.subject for m in got} == {"t.a", "t.b"} and got[-1].data == b"t.b"
    assert await reader.catch_up() == 0  # nothing new: nothing again
    more = await publish(nc, ["t.b", "t.noise", "t.a"])
    assert await reader.catch_up() == 2
    assert [m.seq for m in got[-2:]] == [more[0], more[2]]


def test_a_round_stops_where_a_page_stopped_short():
    def stored(seq: int) -> Stored:
        return Stored(seq, "x", None, b"")  # type: ignore[arg-type]

    busy = Page((stored(2), stored(5)), more=True)  # more of this filter after 5: later ones may be missing
    quiet = Page((stored(3), stored(9)), more=False)
    messages, reached = merge({"a": busy, "b": quiet})
    assert [m.seq for m in messages] == [2, 3, 5]
    assert reached == {"a": 5, "b": 3}  # 9 is read again next round, after a's 6..8


async def test_an_empty_stream_and_a_start_after_everything_give_nothing(nc):
    await stream(nc)
    got: list[Stored] = []
    assert await follower(nc, got).catch_up() == 0
    await publish(nc, ["t.a"])
    late = follower(nc, got, since=(await read_page(nc, "T", 1, "t.a")).messages[0].at + timedelta(seconds=1))
    assert await late.catch_up() == 0 and got == []


async def test_a_start_time_replays_only_what_came_after_it(nc):
    await stream(nc)
    await publish(nc, ["t.a", "t.b"])
    since = (await read_page(nc, "T", 1, "t.b")).messages[0].at + timedelta(microseconds=1)
    later = await publish(nc, ["t.b", "t.a"])
    got: list[Stored] = []
    assert await follower(nc, got, since=since).catch_up() == 2
    assert [m.seq for m in got] == later


async def test_messages_aged_out_are_skipped_before_and_between_reads(nc):
    await stream(nc, max_age=1.0)
    js = nc.jetstream()
    await publish(nc, ["t.a", "t.a", "t.b"])
    got: list[Stored] = []
    reader = follower(nc, got)
    assert await reader.catch_up() == 3
    await publish(nc, ["t.a", "t.b"])  # aged out before the reader comes back
    await wait_until(lambda: _empty(js), timeout=10, interval=0.2, what="max-age to remove every message")
    later = await publish(nc, ["t.b", "t.a"])
    assert await reader.catch_up() == 2
    assert [m.seq for m in got[3:]] == later
    fresh: list[Stored] = []
    assert await follower(nc, fresh).catch_up() == 2  # from the start: the first stored is sequence 6
    assert [m.seq for m in fresh] == later


async def _serving(client) -> bool:
    try:
        return (await client.jetstream(timeout=1).stream_info("T")).state.messages == 3
    except (nats.errors.Error, OSError):
        return False


async def _empty(js) -> bool:
    return (await js.stream_info("T")).state.messages == 0


async def test_a_stream_without_direct_get_is_an_error_that_says_so(nc):
    await nc.jetstream().add_stream(api.StreamConfig(name="T", subjects=["t.>"]))
    with pytest.raises(StreamReadError, match="allow_direct"):
        await read_page(nc, "T", 1, "t.a", timeout=2)


async def test_a_server_restart_loses_and_repeats_nothing(nats_server):
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await stream(client)
        before = await publish(client, ["t.a", "t.b", "t.noise"])
        got: list[Stored] = []
        reader = follower(client, got, poll_s=0.05)
        reader.start()
        await wait_until(lambda: len(got) == 2, what="the first two")
        nats_server.restart()
        await wait_until(lambda: _serving(client), timeout=20, what="JetStream back after the restart")
        after = await publish(client, ["t.b", "t.noise", "t.a"])
        await wait_until(lambda: len(got) >= 4, timeout=20, what="the two published after the restart")
        await reader.stop()
        assert await reader.catch_up() == 0  # its cursors stand after the last one: nothing comes twice
        assert [m.seq for m in got] == [before[0], before[1], after[0], after[2]]
    finally:
        await client.close()
