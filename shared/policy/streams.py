"""Started streams after they start (DESIGN §10): their latest figures, and which must end.

No stream stays "started" for ever: one whose proxy replica stopped heartbeating
is ended as `proxy_lost`; one whose figures went stale is checked at its stat
URL and ended as `session_gone` when the engine no longer knows the session
(that covers external proxies too, which publish no figures at all).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from urllib.parse import urlsplit

import msgspec

from shared.policy.clock import start_time
from shared.schemas import EngineRecord, StreamRecord, StreamStats

replace = msgspec.structs.replace

# Figures older than this many STAT_INTERVAL_S are stale: the stream's session is checked at its engine.
STATS_FRESH_INTERVALS = 3

PROXY_LOST = "proxy_lost"
SESSION_GONE = "session_gone"


def apply_stats(record: StreamRecord | None, report: StreamStats, now: datetime) -> StreamRecord | None:
    """The record holding the report's figures, or the record itself when they do not apply.

    Only a started stream takes figures: an unknown one is not made (no record out of a report)
    and an ended one stays as it ended. Figures from a proxy other than the one that started the
    stream are not its own; figures no newer than those held are a late report. The report's
    stamp is the proxy's, never later than the state-keeper's `now` (absent: `now`).
    """
    if record is None or record.status != "started":
        return record
    if report.proxy and record.proxy and report.proxy != record.proxy:
        return record
    stamp = start_time(report.stats.reported_at, now)
    held = record.stats.reported_at if record.stats is not None else None
    if held is not None and stamp <= held:
        return record
    return replace(
        record,
        stats=replace(report.stats, reported_at=stamp),
        viewers=record.viewers if report.viewers is None else report.viewers,
        relayed_bytes=record.relayed_bytes if report.relayed_bytes is None else report.relayed_bytes,
    )


def lost_to_proxies(streams: Iterable[StreamRecord], live_proxies: Collection[str]) -> list[StreamRecord]:
    """Started streams whose proxy is not among the live members of the proxy group.

    Only for a caller that has itself watched the group for at least a TTL without a gap:
    a proxy missing from a younger watch may simply not have been heard yet.
    """
    return [s for s in streams if s.status == "started" and s.proxy and s.proxy not in live_proxies]


def last_heard(stream: StreamRecord) -> datetime | None:
    """When the stream last gave a sign of life: its latest figures, else its start."""
    reported = stream.stats.reported_at if stream.stats is not None else None
    return reported or stream.started_at


def needs_session_check(stream: StreamRecord, now: datetime, stat_interval_s: float) -> bool:
    """A started stream with a stat URL and no figures for STATS_FRESH_INTERVALS intervals
    (counting from its start, so a stream just started is not checked before its proxy could report)."""
    if stream.status != "started" or not stream.stat_url:
        return False
    heard = last_heard(stream)
    return heard is None or (now - heard).total_seconds() >= STATS_FRESH_INTERVALS * stat_interval_s


def stat_url_on_engine(stream: StreamRecord, engine: EngineRecord | None) -> bool:
    """Whether the stream's stat URL is on the engine it plays on (plain http, same host and port).

    Any client may publish `stream.started` with any `stat_url`; the state-keeper fetches only
    URLs of engines it knows, so the check cannot be aimed at another service (request forgery).
    """
    if engine is None or not stream.stat_url:
        return False
    try:
        parts = urlsplit(stream.stat_url)
        port = parts.port or 80
    except ValueError:  # a port out of range or not a number
        return False
    return parts.scheme == "http" and parts.hostname == engine.host.lower() and port == engine.port
