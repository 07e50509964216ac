"""Counters the state-keeper keeps: exported on METRICS_PORT and in micro's $SRV.STATS data.

The gateway sums the STATS data of all replicas, so it can show fleet-wide
rejections and selections without any state of its own.
"""

from __future__ import annotations

import functools
from collections import Counter

from prometheus_client import Counter as PromCounter

_APPLIED = PromCounter("aceorch_events_applied", "Events applied, by subject", ["subject"])
_REJECTED = PromCounter("aceorch_events_rejected", "Events rejected, by reason", ["reason"])
_SELECTIONS = PromCounter("aceorch_selections", "engine.select replies, by result", ["result"])
_CONFLICTS = PromCounter(
    "aceorch_cas_conflicts", "Compare-and-sets lost to a concurrent writer of the same record (retried)", ["record"]
)
_STREAM_STATS = PromCounter(
    "aceorch_stream_stats", "stream.stats reports, by result (applied, ignored, or why rejected)", ["result"]
)
_REQUESTS_REJECTED = PromCounter("aceorch_requests_rejected", "Bad requests, by endpoint", ["endpoint"])


# Labelled children looked up once: selection and event ingest are hot paths, and
# `labels()` costs a lock and a dict build per call. (Subjects and results are few.)
@functools.cache
def _selection_counter(result: str) -> PromCounter:
    return _SELECTIONS.labels(result)


@functools.cache
def _applied_counter(subject: str) -> PromCounter:
    return _APPLIED.labels(subject)


class Stats:
    def __init__(self) -> None:
        self.applied: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.selections: Counter[str] = Counter()
        self.bad_requests: Counter[str] = Counter()
        self.conflicts: Counter[str] = Counter()
        self.stream_stats: Counter[str] = Counter()

    def event_applied(self, subject: str) -> None:
        self.applied[subject] += 1
        _applied_counter(subject).inc()

    def event_rejected(self, reason: str) -> None:
        self.rejected[reason] += 1
        _REJECTED.labels(reason).inc()

    def selection(self, result: str) -> None:
        self.selections[result] += 1
        _selection_counter(result).inc()

    def conflict(self, record: str, count: int) -> None:
        self.conflicts[record] += count
        _CONFLICTS.labels(record).inc(count)

    def stream_stats_report(self, result: str) -> None:
        """A stream.stats report: `applied`, `ignored` (unknown or ended stream, late) or a rejection reason."""
        self.stream_stats[result] += 1
        _STREAM_STATS.labels(result).inc()

    def bad_request(self, endpoint: str) -> None:
        self.bad_requests[endpoint] += 1
        _REQUESTS_REJECTED.labels(endpoint).inc()

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            "applied": dict(self.applied),
            "rejected": dict(self.rejected),
            "selections": dict(self.selections),
            "bad_requests": dict(self.bad_requests),
            "conflicts": dict(self.conflicts),
            "stream_stats": dict(self.stream_stats),
        }
