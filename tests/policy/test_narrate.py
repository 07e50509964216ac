"""Events in an operator's words: health flips with the error, cleans with sizes, removals, streams."""

import pytest
from records import NOW, engine

from shared.policy.narrate import demand, describe_event, error_words, health_flip, size
from shared.schemas import (
    EngineCleaned,
    EngineDemand,
    EngineHealth,
    EngineRegistered,
    EngineRemoved,
    StreamEnded,
    StreamStarted,
)


def test_an_unhealthy_flip_says_the_error_the_timeout_and_the_failures_in_a_row():
    record = engine(
        "e3", container_name="acestream-3", health_status="unhealthy", last_error="timeout", consecutive_failures=2
    )
    flip = health_flip(record, NOW, 5.0)
    assert flip.text == "acestream-3 unhealthy: timeout after 5.0 s, 2 failures in a row"
    assert (flip.kind, flip.level, flip.container_id, flip.at) == ("health.unhealthy", "error", "e3", NOW)


def test_one_failure_is_singular():
    record = engine(health_status="unhealthy", last_error="refused", consecutive_failures=1)
    assert health_flip(record, NOW, 5.0).text == "e1 unhealthy: connection refused, 1 failure in a row"


@pytest.mark.parametrize("last_error, text", [(None, "acestream-1 healthy"), ("timeout", "acestream-1 healthy again")])
def test_a_healthy_flip(last_error, text):
    record = engine(container_name="acestream-1", health_status="healthy", last_error=last_error)
    flip = health_flip(record, NOW, 5.0)
    assert (flip.text, flip.level) == (text, "info")


def test_an_unknown_flip_is_a_warning():
    flip = health_flip(engine(health_status="unknown"), NOW, 5.0)
    assert (flip.text, flip.level) == ("e1 health unknown: no recent probe", "warning")


def test_flips_of_one_engine_at_different_times_are_different_events():
    record = engine(health_status="unhealthy")
    assert health_flip(record, NOW, 5.0).id != health_flip(record, NOW.replace(second=1), 5.0).id
    assert health_flip(record, NOW, 5.0).id == health_flip(record, NOW, 5.0).id


@pytest.mark.parametrize(
    "error, words",
    [
        ("timeout", "timeout after 2.5 s"),
        ("refused", "connection refused"),
        ("disconnected", "connection closed without an answer"),
        ("connect_error", "connect error"),
        ("http 500", "http 500"),
        (None, "no answer"),
        ("", "no answer"),
    ],
)
def test_error_words(error, words):
    assert error_words(error, 2.5) == words


@pytest.mark.parametrize(
    "n, text",
    [
        (None, "an unknown size"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KB"),
        (734003200, "700 MB"),
        (10 * 1024**3, "10 GB"),
    ],
)
def test_sizes_read_like_the_dashboard(n, text):
    assert size(n) == text


@pytest.mark.parametrize(
    "subject, event, text, level, kind",
    [
        (
            "engine.cleaned",
            EngineCleaned(container_id="e3", ok=True, cache_size_bytes=734003200),
            "acestream-3 cache cleaned: 700 MB removed",
            "info",
            "engine.cleaned",
        ),
        (
            "engine.cleaned",
            EngineCleaned(container_id="e3", ok=False, error="exec failed"),
            "acestream-3 cache clean failed: exec failed",
            "warning",
            "engine.clean_failed",
        ),
        (
            "engine.removed",
            EngineRemoved(container_id="e3", reason="idle"),
            "acestream-3 reaped: idle",
            "info",
            "engine.removed",
        ),
        (
            "engine.removed",
            EngineRemoved(container_id="e3", reason="unhealthy"),
            "acestream-3 replaced: unhealthy for too long",
            "warning",
            "engine.removed",
        ),
        (
            "engine.removed",
            EngineRemoved(container_id="e3", reason="died"),
            "acestream-3 died",
            "warning",
            "engine.removed",
        ),
        (
            "engine.removed",
            EngineRemoved(container_id="e3", reason="deregistered via API"),
            "acestream-3 removed: deregistered via API",
            "info",
            "engine.removed",
        ),
        ("engine.removed", EngineRemoved(container_id="e3"), "acestream-3 removed", "info", "engine.removed"),
        (
            "engine.registered",
            EngineRegistered(container_id="e3", host="127.0.0.1", port=6878, runtime="local"),
            "acestream-3 started (local) at 127.0.0.1:6878",
            "info",
            "engine.registered",
        ),
        (
            "engine.registered",
            EngineRegistered(container_id="e3", host="10.0.0.5", port=6878),
            "acestream-3 registered at 10.0.0.5:6878",
            "info",
            "engine.registered",
        ),
        (
            "stream.started",
            StreamStarted(stream_id="s1", container_id="e3", content_key="ch-news"),
            "stream of ch-news started on acestream-3",
            "info",
            "stream.started",
        ),
        (
            "stream.ended",
            StreamEnded(stream_id="s1", container_id="e3", reason="viewers_left"),
            "stream on acestream-3 ended: viewers left",
            "info",
            "stream.ended",
        ),
        (
            "stream.ended",
            StreamEnded(stream_id="s1", container_id="e3", reason="failover"),
            "stream on acestream-3 failed over to another engine",
            "warning",
            "stream.failover",
        ),
        (
            "stream.ended",
            StreamEnded(stream_id="s1", container_id="e3", reason="failover_exhausted"),
            "stream on acestream-3 failovers exhausted",
            "warning",
            "stream.failover",
        ),
        (
            "stream.ended",
            StreamEnded(stream_id="s1", container_id="e3"),
            "stream on acestream-3 ended",
            "info",
            "stream.ended",
        ),
    ],
)
def test_stored_events_in_words(subject, event, text, level, kind):
    described = describe_event(subject, event, NOW, "acestream-3", "id-1")
    assert described is not None
    assert (described.text, described.level, described.kind, described.id, described.at) == (
        text,
        level,
        kind,
        "id-1",
        NOW,
    )
    assert described.container_id == "e3"


def test_without_a_name_the_id_is_used():
    described = describe_event("engine.removed", EngineRemoved(container_id="e9", reason="idle"), NOW, None, "x")
    assert described is not None and described.text == "e9 reaped: idle"


def test_health_observations_are_not_listed():
    observation = EngineHealth(container_id="e3", ok=False, checked_at=NOW, error="timeout")
    assert describe_event("engine.health", observation, NOW, "acestream-3", "x") is None


@pytest.mark.parametrize(
    "content, text",
    [
        ("ch-news", "demand for ch-news: no free engine, asking the provisioner"),
        (None, "demand for a new engine: no free engine, asking the provisioner"),
    ],
)
def test_demand(content, text):
    notice = demand(EngineDemand(content_key=content), NOW, "d1")
    assert (notice.text, notice.kind, notice.level, notice.container_id) == (text, "engine.demand", "warning", None)
