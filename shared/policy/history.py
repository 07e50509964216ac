"""Fleet history (issue 14): what one sample holds and how a range of samples becomes a series.

Pure: records, counters, latencies and `now` in; a `HistorySample` or points out.
The gateway's sampler and `GET /api/history` are the shells around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from shared.schemas import EngineRecord, HistoryPoint, HistorySample, StreamRecord

RANGES: dict[str, float] = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 24 * 3600.0}
MAX_POINTS = 360  # per series: a chart's width in points; 1h at 10 s is exactly this
SELECTED = ("selected", "shared")  # engine.select results that gave an engine
NO_CAPACITY = "no_capacity"  # engine.select's refusal that the HTTP API answers with 503


class RangeError(ValueError):
    """A `range` the history API does not know."""


def parse_range(text: str) -> float:
    """Seconds for `1h`, `6h` or `24h`; anything else is a RangeError naming the choices."""
    try:
        return RANGES[text]
    except KeyError:
        raise RangeError(f"range must be one of {', '.join(RANGES)}, got {text!r}") from None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (0 < q <= 100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def per_second(
    before: Mapping[str, int] | None, before_at: float | None, now: Mapping[str, int], now_at: float
) -> dict[str, float] | None:
    """Counter rates between two readings; None without a usable earlier one.

    A counter that went down was reset (a state-keeper restarted): what it
    counts now happened since, so it is the increase, as Prometheus's rate()
    treats resets.
    """
    if before is None or before_at is None or now_at <= before_at:
        return None
    elapsed = now_at - before_at
    rates: dict[str, float] = {}
    for key in set(before) | set(now):
        current, earlier = now.get(key, 0), before.get(key, 0)
        rates[key] = (current - earlier if current >= earlier else current) / elapsed
    return rates


def sample_of(
    epoch: int,
    interval_s: float,
    engines: Iterable[EngineRecord],
    streams: Iterable[StreamRecord],
    selection_rates: Mapping[str, float] | None,
    latencies_ms: Sequence[float],
) -> HistorySample:
    """The sample for `epoch` from the engines as shown, started streams, selection rates and the
    probe latencies seen since the previous boundary."""
    sample: dict[str, int] = dict.fromkeys(
        ("healthy", "unhealthy", "unknown", "active", "draining", "cleaning", "cache_cleaned_bytes"), 0
    )
    for engine in engines:
        sample[engine.health_status] += 1
        sample[engine.state] += 1
        sample["cache_cleaned_bytes"] += engine.cache_size_bytes or 0
    started = [s for s in streams if s.status == "started"]
    stats = [s.stats for s in started if s.stats is not None]
    return HistorySample(
        epoch=epoch,
        at=datetime.fromtimestamp(epoch * interval_s, UTC),
        interval_s=interval_s,
        streams=len(started),
        channels=len({s.content_key or s.stream_id for s in started}),
        peers=sum(st.peers or 0 for st in stats),
        viewers=sum(s.viewers or 0 for s in started),
        relayed_bytes=sum(s.relayed_bytes or 0 for s in started),
        speed_down_kib=sum(st.speed_down or 0 for st in stats),
        downloaded_bytes=sum(st.downloaded or 0 for st in stats),
        selections_per_s=None if selection_rates is None else sum(selection_rates.get(k, 0.0) for k in SELECTED),
        no_capacity_per_s=None if selection_rates is None else selection_rates.get(NO_CAPACITY, 0.0),
        probes=len(latencies_ms),
        probe_p50_ms=percentile(latencies_ms, 50),
        probe_p99_ms=percentile(latencies_ms, 99),
        **sample,
    )


def downsample(
    samples: Iterable[HistorySample], range_s: float, now: datetime, max_points: int = MAX_POINTS
) -> tuple[float, list[HistoryPoint]]:
    """(step in seconds, points) for the samples in the last `range_s` before `now`, at most
    `max_points`, oldest first. A point is the mean of the samples in its step, except probe p99,
    which is their worst (a spike must not be averaged away). Steps without samples are left out:
    a gap stays a gap on the chart instead of a made-up value."""
    kept = list(samples)
    if not kept:
        return 0.0, []
    interval = min(s.interval_s for s in kept)
    step = max(interval, math.ceil(range_s / max_points / interval) * interval)
    # Steps are aligned to multiples of `step` (a point does not move between two requests); the
    # oldest partial step is left out, so a range is at most `max_points` points.
    last = math.floor(now.timestamp() / step)
    first = max(last - max_points + 1, math.floor((now.timestamp() - range_s) / step) + 1)
    groups: dict[int, list[HistorySample]] = {}
    for s in kept:
        at = s.at.timestamp()
        if at <= now.timestamp() and first <= (key := math.floor(at / step)) <= last:
            groups.setdefault(key, []).append(s)
    if not groups:
        return 0.0, []
    points = [_point(datetime.fromtimestamp(k * step, UTC), group) for k, group in sorted(groups.items())]
    return step, points


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _point(at: datetime, group: list[HistorySample]) -> HistoryPoint:
    def mean(name: str) -> float:
        return float(sum(getattr(s, name) for s in group)) / len(group)

    p99s = [s.probe_p99_ms for s in group if s.probe_p99_ms is not None]
    return HistoryPoint(
        at=at,
        samples=len(group),
        healthy=mean("healthy"),
        unhealthy=mean("unhealthy"),
        unknown=mean("unknown"),
        streams=mean("streams"),
        channels=mean("channels"),
        peers=mean("peers"),
        viewers=mean("viewers"),
        relayed_bytes=mean("relayed_bytes"),
        speed_down_kib=mean("speed_down_kib"),
        selections_per_s=_mean(s.selections_per_s for s in group),
        no_capacity_per_s=_mean(s.no_capacity_per_s for s in group),
        probe_p50_ms=_mean(s.probe_p50_ms for s in group),
        probe_p99_ms=max(p99s) if p99s else None,
        cache_cleaned_bytes=mean("cache_cleaned_bytes"),
    )


def expired(sample: HistorySample, now: datetime, max_age_s: float) -> bool:
    """Older than the stream keeps it (HISTORY_MAX_AGE_H): the gateway's copy drops it too."""
    return sample.at < now - timedelta(seconds=max_age_s)
