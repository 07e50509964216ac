"""Fleet history: what a sample holds, counter rates across resets, and downsampling a range."""

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from records import NOW, engine

from shared.policy.history import (
    MAX_POINTS,
    RangeError,
    downsample,
    expired,
    parse_range,
    per_second,
    percentile,
    sample_of,
)
from shared.schemas import HistorySample, PlaybackStats, StreamRecord, decode_sample

INTERVAL = 10.0
EPOCH = int(NOW.timestamp() // INTERVAL)


def sample(epoch: int, interval: float = INTERVAL, **fields) -> HistorySample:
    return HistorySample(epoch=epoch, at=datetime.fromtimestamp(epoch * interval, UTC), interval_s=interval, **fields)


def stream(
    stream_id: str,
    content: str | None = "ch",
    status: str = "started",
    viewers: int | None = None,
    relayed: int | None = None,
    **stats,
) -> StreamRecord:
    return StreamRecord(
        stream_id=stream_id,
        content_key=content,
        status=status,
        stats=PlaybackStats(**stats) if stats else None,
        viewers=viewers,
        relayed_bytes=relayed,
    )


@pytest.mark.parametrize("text, seconds", [("1h", 3600), ("6h", 21600), ("24h", 86400)])
def test_known_ranges(text, seconds):
    assert parse_range(text) == seconds


@pytest.mark.parametrize("text", ["", "2h", "1H", "24", "1d", "-1h"])
def test_an_unknown_range_names_the_choices_and_the_value(text):
    with pytest.raises(RangeError) as raised:
        parse_range(text)
    assert str(raised.value) == f"range must be one of 1h, 6h, 24h, got {text!r}"


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([4.0, 3.0, 2.0, 1.0], 50, 2.0),
        ([float(n) for n in range(1, 101)], 99, 99.0),
        ([float(n) for n in range(1, 101)], 100, 100.0),
        ([1.0] * 98 + [500.0, 900.0], 99, 500.0),
    ],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_rates_are_increases_per_second():
    assert per_second({"selected": 10, "no_capacity": 2}, 100.0, {"selected": 30, "no_capacity": 2}, 110.0) == {
        "selected": 2.0,
        "no_capacity": 0.0,
    }


def test_a_counter_seen_first_counts_from_zero():
    assert per_second({}, 0.0, {"shared": 5}, 5.0) == {"shared": 1.0}


def test_a_reset_counter_counts_what_it_holds_now():
    assert per_second({"selected": 1000}, 0.0, {"selected": 20}, 10.0) == {"selected": 2.0}


@pytest.mark.parametrize("before, before_at, now_at", [(None, None, 5.0), ({"a": 1}, None, 5.0), ({"a": 1}, 5.0, 5.0)])
def test_no_rate_without_an_earlier_reading(before, before_at, now_at):
    assert per_second(before, before_at, {"a": 3}, now_at) is None


def test_a_sample_counts_engines_streams_and_probes():
    engines = [
        engine("a", health_status="healthy", cache_size_bytes=100),
        engine("b", health_status="unhealthy", state="draining"),
        engine("c", health_status="unknown", state="cleaning", cache_size_bytes=50),
        engine("d", health_status="healthy"),
    ]
    streams = [
        stream("s1", "ch-news", viewers=5, relayed=4000, peers=3, speed_down=100, downloaded=1000),
        stream("s2", "ch-news", viewers=2, peers=4, speed_down=50),
        stream("s3", "ch-film"),
        stream("s4", "ch-old", status="ended", viewers=40, relayed=999, peers=99, speed_down=999, downloaded=999),
    ]
    got = sample_of(EPOCH, INTERVAL, engines, streams, {"selected": 1.5, "shared": 0.5, "no_capacity": 0.25}, [3, 1, 2])
    assert got == HistorySample(
        epoch=EPOCH,
        at=datetime.fromtimestamp(EPOCH * INTERVAL, UTC),
        interval_s=INTERVAL,
        healthy=2,
        unhealthy=1,
        unknown=1,
        active=2,
        draining=1,
        cleaning=1,
        streams=3,
        channels=2,
        peers=7,
        viewers=7,
        relayed_bytes=4000,
        speed_down_kib=150,
        downloaded_bytes=1000,
        selections_per_s=2.0,
        no_capacity_per_s=0.25,
        probes=3,
        probe_p50_ms=2,
        probe_p99_ms=3,
        cache_cleaned_bytes=150,
    )


def test_an_empty_fleet_samples_zeros_and_unknown_rates():
    got = sample_of(EPOCH, INTERVAL, [], [], None, [])
    assert (got.healthy, got.streams, got.channels, got.probes) == (0, 0, 0, 0)
    assert (got.selections_per_s, got.no_capacity_per_s, got.probe_p50_ms, got.probe_p99_ms) == (None,) * 4


def test_an_hour_at_ten_seconds_is_one_point_per_sample():
    samples = [sample(EPOCH - n, healthy=n) for n in range(360)]
    step, points = downsample(reversed(samples), 3600, NOW)
    assert step == INTERVAL and len(points) == 360
    assert [p.at for p in points] == sorted(p.at for p in points)
    assert points[-1].healthy == 0 and points[0].healthy == 359 and all(p.samples == 1 for p in points)


def test_a_day_is_at_most_the_chart_width_and_means_each_step():
    samples = [
        sample(EPOCH - n, streams=n % 2 * 10, viewers=n % 2 * 30, relayed_bytes=n % 4, probe_p99_ms=float(n % 24))
        for n in range(8640)
    ]
    step, points = downsample(samples, 86400, NOW)
    assert step == 240.0 and len(points) == MAX_POINTS
    assert all(p.at.timestamp() % step == 0 for p in points)
    assert points[-1].at == NOW and points[-1].samples == 1  # the step that just began
    full = points[:-1]
    assert all(p.samples == 24 and p.streams == 5.0 and p.viewers == 15.0 and p.relayed_bytes == 1.5 for p in full)
    # p99 is the worst in the step, not the mean: a spike stays visible
    assert all(p.probe_p99_ms == 23.0 for p in full)


def test_more_samples_than_steps_never_exceed_the_width():
    samples = [sample(EPOCH * 20 - n, interval=0.5) for n in range(20000)]
    step, points = downsample(samples, 3600, NOW)
    assert step == 10.0 and len(points) == MAX_POINTS


def test_unknown_values_stay_unknown_and_known_ones_are_averaged():
    samples = [
        sample(EPOCH + 1, selections_per_s=None, probe_p50_ms=None),
        sample(EPOCH + 2, selections_per_s=4.0, probe_p50_ms=2.0),
    ]
    _, [point] = downsample(samples, 86400, NOW + timedelta(seconds=30))
    assert (point.selections_per_s, point.probe_p50_ms, point.no_capacity_per_s) == (4.0, 2.0, None)
    _, [alone] = downsample(samples[:1], 3600, NOW + timedelta(seconds=30))
    assert (alone.selections_per_s, alone.probe_p99_ms) == (None, None)


def test_samples_outside_the_range_are_left_out_and_gaps_stay_gaps():
    samples = [sample(EPOCH - 400), sample(EPOCH - 10), sample(EPOCH - 8), sample(EPOCH + 1)]
    step, points = downsample(samples, 3600, NOW)
    assert step == INTERVAL
    assert [p.at for p in points] == [samples[1].at, samples[2].at]


def test_nothing_to_show():
    assert downsample([], 3600, NOW) == (0.0, [])


def test_expiry_is_by_age():
    assert expired(sample(EPOCH - 361), NOW, 3600)
    assert not expired(sample(EPOCH - 359), NOW, 3600)


def test_a_sample_from_a_newer_gateway_is_read_by_an_older_one():
    """Rolling upgrade: fields this version does not know are ignored, the known ones kept."""
    newer = msgspec.json.encode(
        {"epoch": 7, "at": "2026-11-30T10:00:00Z", "interval_s": 10.0, "healthy": 3, "gpu_temperature": 71}
    )
    sample = decode_sample(newer)
    assert (sample.epoch, sample.healthy, sample.interval_s) == (7, 3, 10.0)
