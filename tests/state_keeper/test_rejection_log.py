"""A flood of bad events is counted in full but logged in a few lines (one client publishing
3,000 malformed events used to write 3,000 WARNING lines)."""

from __future__ import annotations

import logging
import re

from keeper_helpers import consumer_drained
from support import keeper_stats, wait_until

from services.state_keeper.consumer import RejectionLog
from shared import names


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _summaries(text: str, reason: str, subject: str) -> int:
    pattern = rf"rejected ([\d,]+) more {reason} events on {re.escape(subject)} in the last"
    return sum(int(n.replace(",", "")) for n in re.findall(pattern, text))


def test_a_flood_logs_the_first_few_then_one_summary_per_interval(caplog):
    clock = Clock()
    rejections = RejectionLog(first=5, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="state-keeper"):
        for _ in range(3000):
            rejections.rejected(names.STREAM_STARTED, "malformed_json", "malformed JSON at byte 1")
        rejections.flush()
        assert len(caplog.records) == 5, "nothing more until the interval is over"
        clock.now += 10
        rejections.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6
    assert all("malformed JSON at byte 1" in line for line in lines[:5])
    assert lines[5] == "rejected 2,995 more malformed_json events on stream.started in the last 10 s"


def test_each_subject_and_reason_gets_its_own_first_lines_and_a_quiet_one_no_summary(caplog):
    clock = Clock()
    rejections = RejectionLog(first=2, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="state-keeper"):
        for _ in range(4):
            rejections.rejected(names.STREAM_STARTED, "invalid", "bad field")
        rejections.rejected(names.ENGINE_HEALTH, "invalid", "bad field")
        clock.now += 11
        rejections.rejected(names.STREAM_STARTED, "invalid", "bad field")  # a new interval: logged in full again
        clock.now += 11
        rejections.flush()
    text = caplog.text
    assert _summaries(text, "invalid", names.STREAM_STARTED) == 2
    assert "more invalid events on engine.health" not in text
    assert text.count("rejected stream.started (invalid)") == 3
    assert text.count("rejected engine.health (invalid)") == 1


async def test_the_service_logs_a_flood_of_malformed_events_in_a_few_lines(start_keepers, bus, nc):
    flood = 300
    [keeper] = await start_keepers(1)
    for n in range(flood):
        await nc.publish(names.STREAM_STARTED, b"{not json %d" % n)
    await nc.flush()

    async def all_counted() -> bool:
        return (await keeper_stats(nc)).get("rejected") == {"malformed_json": flood}

    # Every rejection is still counted.
    await wait_until(all_counted, timeout=60, what=f"{flood} rejections counted")
    await wait_until(lambda: consumer_drained(bus), timeout=60, what="consumer drained")

    def logged() -> tuple[int, int]:
        text = keeper.log()
        return text.count("rejected stream.started (malformed_json)"), _summaries(
            text, "malformed_json", names.STREAM_STARTED
        )

    await wait_until(lambda: sum(logged()) == flood, timeout=30, what="the rejections summarised in the log")
    full, _summarised = logged()
    assert 1 <= full <= 10, f"{full} full lines for {flood} rejections"  # five per interval, at most two intervals
