"""The one compare-and-set loop and its lean request path, against a real nats-server."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import pytest
from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError

from shared.bus import bucket_stream_config
from shared.config import load_config
from shared.kv import DELETE, Versioned, _publish, _Replies, cas_update, read


class Counter(msgspec.Struct):
    n: int


def decode(data: bytes) -> Counter:
    return msgspec.json.decode(data, type=Counter)


async def bucket(nc, url: str, name: str = "t_kv"):
    js = nc.jetstream(timeout=2)
    await js.add_stream(bucket_stream_config(name, load_config({"NATS_URL": url})))
    return js, await js.key_value(name)


async def test_concurrent_increments_all_land_exactly_once(nc, nats_server):
    _, kv = await bucket(nc, nats_server.url)
    increments = 60
    await asyncio.gather(
        *(
            cas_update(kv, "k", lambda c: Counter(1) if c is None else Counter(c.n + 1), decode)
            for _ in range(increments)
        )
    )
    assert (await read(kv, "k", decode)).value == Counter(increments)
    outcome = await cas_update(kv, "k", lambda c: DELETE, decode)
    assert outcome.written and await read(kv, "k", decode) is None
    # result() is for changes that always yield a value: a delete says so instead of handing on None.
    with pytest.raises(AssertionError, match="left none"):
        outcome.result()


async def test_result_is_the_value_written(nc, nats_server):
    _, kv = await bucket(nc, nats_server.url)
    outcome = await cas_update(kv, "k", lambda c: Counter(7), decode)
    assert outcome.result() == Counter(7)


async def test_a_stale_revision_is_a_conflict_and_a_good_one_writes(nc, nats_server):
    _, kv = await bucket(nc, nats_server.url)
    first = await _publish(kv, "k", b'{"n":1}', 0)
    with pytest.raises(KeyWrongLastSequenceError):
        await _publish(kv, "k", b'{"n":2}', 0)
    assert await _publish(kv, "k", b'{"n":2}', first) > first


async def test_a_stale_cached_revision_costs_one_counted_conflict(nc, nats_server):
    _, kv = await bucket(nc, nats_server.url)
    stale = await _publish(kv, "k", b'{"n":1}', 0)
    await _publish(kv, "k", b'{"n":5}', stale)  # another writer moves on
    outcome = await cas_update(kv, "k", lambda c: Counter(c.n + 1), decode, cached=Versioned(Counter(1), stale))
    assert outcome.written and outcome.after == Counter(6) and outcome.conflicts == 1


async def test_a_bucket_that_is_gone_answers_no_stream(nc, nats_server):
    js, kv = await bucket(nc, nats_server.url)
    await js.delete_stream("KV_t_kv")
    with pytest.raises(NoStreamResponseError):
        await _publish(kv, "k", b'{"n":1}', 0)


async def test_an_unanswered_request_times_out_and_leaves_nothing_waiting(nc):
    await nc.subscribe("t.silent", cb=_ignore)
    replies = await _Replies.of(nc)
    with pytest.raises(nats.errors.TimeoutError):
        await replies.request("t.silent", b"x", {}, 0.2)
    assert replies._waiting == {}


async def test_replies_reach_their_own_requester(nc):
    async def echo(msg):
        await msg.respond(msg.data)

    await nc.subscribe("t.echo", cb=echo)
    replies = await _Replies.of(nc)
    answers = await asyncio.gather(*(replies.request("t.echo", str(i).encode(), {}, 2) for i in range(200)))
    assert [a.data for a in answers] == [str(i).encode() for i in range(200)]
    assert replies._waiting == {}


async def _ignore(msg) -> None:
    pass
