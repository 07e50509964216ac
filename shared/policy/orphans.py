"""Streams an engine lists although no record of them exists (neither started nor an ended tombstone).

A start writes the engine first and the stream record a round trip later, so a
fresh start legitimately lists a stream without a record for a moment; a start
held back by an unavailable store lists it on every attempt until the record
lands. Only a stream that stays record-less past a grace period is an orphan: its
start's record was never written (an event dropped after its engine write), and
the engine would count it as load for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

Pair = tuple[str, str]  # (container_id, stream_id)


def orphans_due(
    listed: Mapping[str, Iterable[str]],
    has_record: Callable[[str], bool],
    first_seen: Mapping[Pair, datetime],
    now: datetime,
    grace_s: float,
) -> tuple[dict[Pair, datetime], list[Pair]]:
    """(when each record-less listing was first seen, the ones record-less for `grace_s` or longer).

    The first map holds only listings that are record-less now, so it never outgrows the
    engines' own lists: pass it back in on the next call.
    """
    seen: dict[Pair, datetime] = {}
    due: list[Pair] = []
    for container_id, streams in listed.items():
        for stream_id in streams:
            if has_record(stream_id):
                continue
            pair = (container_id, stream_id)
            since = seen[pair] = first_seen.get(pair, now)
            if (now - since).total_seconds() >= grace_s:
                due.append(pair)
    return seen, due
