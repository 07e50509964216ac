"""Housekeeping keeps the record buckets bounded: a month of delete markers is purged down to
what the last day left, so a start after a month reads what a start after a day reads."""

from __future__ import annotations

import time

import pytest
from support import wait_until, write_markers

from services.state_keeper.keeper import purge_old_markers
from services.state_keeper.store import Store
from shared import names
from shared.kv import KvView, read
from shared.schemas import StreamRecord, decode_stream, encode

MONTH, DAY = 60_000, 2_000  # markers, a month to a day (one ended stream a second leaves 86,400 a day)


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~1 min here; purging runs at 1,300-5,000 markers/s depending on load
async def test_housekeeping_purges_a_month_of_markers_down_to_the_last_days(bus):
    await bus.streams.put("live", encode(StreamRecord(stream_id="live", container_id="e1")))
    await write_markers(bus.nc, bus.streams, "month", MONTH)
    cut = time.time()
    await wait_until(lambda: time.time() > cut + 0.01, what="the clock to move past the cut")
    await write_markers(bus.nc, bus.streams, "day", DAY)

    # A view over a month of markers still starts: slower than its stall timeout, never stalled.
    started = time.monotonic()
    view: KvView[StreamRecord] = KvView(bus.streams, decode_stream)
    await view.start(timeout=2.0)
    month_start = time.monotonic() - started
    assert list(view.items()) == ["live"]
    await view.stop()

    store = Store(bus, stream_ttl_s=3600)
    purged = 0
    while batch := await purge_old_markers(store, horizon_s=time.time() - cut):
        purged += batch
    assert purged == MONTH
    info = await bus.js.stream_info(f"KV_{names.STREAMS_BUCKET}")
    assert info.state.messages == DAY + 1, "only the last day's markers and the live record are left"
    assert (await read(bus.streams, "live", decode_stream)).value.container_id == "e1"

    started = time.monotonic()
    again: KvView[StreamRecord] = KvView(bus.streams, decode_stream)
    await again.start(timeout=2.0)
    day_start = time.monotonic() - started
    assert list(again.items()) == ["live"] and again.gone_revision(f"day-{DAY - 1}") > 0
    await again.stop()
    print(f"view start: {month_start:.2f}s with {MONTH} + {DAY} markers, {day_start:.2f}s after the purge")
