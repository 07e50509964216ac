"""An engine's probe ring (the sparkline's data): the newest PROBES_KEPT, oldest first, no I/O."""

from datetime import UTC, datetime, timedelta

from services.gateway.events import PROBES_KEPT, ProbeRing

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_an_empty_ring_has_no_probes():
    assert ProbeRing().probes() == []


def test_a_ring_keeps_the_newest_oldest_first_with_unknown_latencies_and_failures():
    ring = ProbeRing(3)
    for k in range(5):
        ring.add(T0 + timedelta(seconds=k), None if k == 3 else k + 0.25, k != 4)
    assert [(p.at, p.latency_ms, p.ok) for p in ring.probes()] == [
        (T0 + timedelta(seconds=2), 2.25, True),
        (T0 + timedelta(seconds=3), None, True),
        (T0 + timedelta(seconds=4), 4.25, False),
    ]


def test_a_partly_filled_ring_and_the_default_size():
    ring = ProbeRing()
    for k in range(PROBES_KEPT + 1):
        ring.add(T0 + timedelta(seconds=k), 1.0, True)
        assert len(ring.probes()) == min(k + 1, PROBES_KEPT)
    assert ring.probes()[0].at == T0 + timedelta(seconds=1)
