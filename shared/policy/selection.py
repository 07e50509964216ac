"""Engine selection (DESIGN §5): sticky by content, then least load, then longest idle."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from shared.policy.engines import effective_state, live_reservations, load
from shared.policy.freshness import DEFAULT_HEALTH_MAX_AGE_S, is_health_fresh, stale_at
from shared.schemas import EngineRecord

# Sorts never-used engines before any used one.
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SelectionPolicy:
    max_streams_per_engine: int = 3
    share_content: bool = True
    reservation_ttl_s: float = 30.0
    # A `healthy` older than this is no verdict at all (shared.policy.freshness): the engine may be gone.
    health_max_age_s: float = DEFAULT_HEALTH_MAX_AGE_S


@dataclass(frozen=True)
class Selection:
    engine: EngineRecord
    shared: bool


def is_candidate(record: EngineRecord, now: datetime, policy: SelectionPolicy) -> bool:
    return _free_load(record, now, policy, 0) is not None


def _free_load(record: EngineRecord, now: datetime, policy: SelectionPolicy, extra: int) -> int | None:
    """The engine's load (plus `extra` selections in flight) if it can take another stream now, else None."""
    if record.health_status != "healthy" or not is_health_fresh(record, now, policy.health_max_age_s):
        return None
    if record.claim is not None and effective_state(record, now) != "active":
        return None
    busy = load(record, now) + extra
    return busy if busy < policy.max_streams_per_engine else None


def select_engine(
    engines: Iterable[EngineRecord],
    now: datetime,
    policy: SelectionPolicy,
    content_key: str | None = None,
    playing: Mapping[str, set[str]] | None = None,
    tiebreak: Callable[[str], object] = str,
    in_flight: Mapping[str, int] | None = None,
    exclude: Collection[str] = (),
) -> Selection | None:
    """Pick an engine, or None when there is no capacity.

    `playing` maps a content key to the container ids it currently plays on
    (from the stream records); it makes viewers of one channel share an engine.
    `tiebreak` orders engines that are equal on load and idle time; replicas
    that rank them differently spread their picks instead of racing for one.
    `in_flight` counts this replica's selections still writing their reservation,
    as load, so concurrent requests spread out.
    `exclude` names engines never offered, not even to share their content (a failing-over
    proxy's engine that just stalled or crashed).
    This is the definition; `CandidateIndex` gives the same answer without a scan.
    """
    extra = in_flight or {}
    candidates = []
    for record in engines:
        if record.container_id in exclude:
            continue
        busy = _free_load(record, now, policy, extra.get(record.container_id, 0))
        if busy is not None:
            candidates.append((_rank_key(record, busy, tiebreak), record))
    if not candidates:
        return None
    if policy.share_content and content_key and playing:
        hosts = playing.get(content_key, set())
        sharing = [c for c in candidates if c[1].container_id in hosts]
        if sharing:
            return Selection(min(sharing, key=lambda c: _sharing_key(c[0]))[1], shared=True)
    return Selection(min(candidates, key=lambda c: c[0])[1], shared=False)


RankKey = tuple[int, datetime, object, str]


def _rank_key(record: EngineRecord, busy: int, tiebreak: Callable[[str], object]) -> RankKey:
    """Least load, then longest idle, then this replica's tiebreak (the container id settles a tie)."""
    cid = record.container_id
    return (busy, record.last_stream_usage or _NEVER, tiebreak(cid), cid)


def _sharing_key(key: RankKey) -> tuple[int, object, str]:
    """Among engines already playing the content, idle time does not matter."""
    return (key[0], key[2], key[3])


class CandidateIndex:
    """`select_engine`'s answer in O(log n) per change instead of a scan of every engine per request.

    A heap of rank keys, lazily invalidated: an engine is re-ranked when its record
    changes, when its count of selections in flight changes, or when its rank would
    change by itself (its soonest live reservation or its claim lapses, or its
    health verdict goes stale), which a second heap of deadlines tracks. Entries of older versions are skipped and,
    when they pile up, compacted away.
    """

    def __init__(self, policy: SelectionPolicy, tiebreak: Callable[[str], object] = str) -> None:
        self.policy = policy
        self.tiebreak = tiebreak
        self._records: dict[str, EngineRecord] = {}
        self._in_flight: dict[str, int] = {}
        self._keys: dict[str, RankKey | None] = {}  # current key; None while not a candidate
        self._versions: dict[str, int] = {}  # from one counter, so a re-added engine never matches old entries
        self._counter = itertools.count(1)
        self._ranked: list[tuple[RankKey, int]] = []  # (key, version)
        self._deadlines: list[tuple[datetime, str, int]] = []  # (when the rank changes, engine, version)

    def update(self, container_id: str, record: EngineRecord | None, now: datetime) -> None:
        if record is None:
            self._records.pop(container_id, None)
        else:
            self._records[container_id] = record
        self._rerank(container_id, now)

    def add_in_flight(self, container_id: str, delta: int, now: datetime) -> None:
        """This replica's selections still writing to the engine (+1 when one starts, -1 when it ends)."""
        count = self._in_flight.get(container_id, 0) + delta
        if count > 0:
            self._in_flight[container_id] = count
        else:
            self._in_flight.pop(container_id, None)
        self._rerank(container_id, now)

    def choose(
        self,
        now: datetime,
        content_key: str | None = None,
        playing: Mapping[str, set[str]] | None = None,
        exclude: Collection[str] = (),
    ) -> Selection | None:
        self._advance(now)
        if self.policy.share_content and content_key and playing:
            sharing = [
                (_sharing_key(key), cid)
                for cid in playing.get(content_key, ())
                if cid not in exclude and (key := self._keys.get(cid)) is not None
            ]
            if sharing:
                return Selection(self._records[min(sharing)[1]], shared=True)
        skipped = []
        try:
            while self._ranked:
                key, version = self._ranked[0]
                cid = key[3]
                if self._versions.get(cid) != version or self._keys.get(cid) is None:
                    heapq.heappop(self._ranked)
                elif cid in exclude:
                    skipped.append(heapq.heappop(self._ranked))
                else:
                    return Selection(self._records[cid], shared=False)
            return None
        finally:
            for entry in skipped:
                heapq.heappush(self._ranked, entry)

    def _advance(self, now: datetime) -> None:
        """Re-rank the engines whose reservations, claims or health verdicts lapsed since the last look."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, cid, version = heapq.heappop(self._deadlines)
            if self._versions.get(cid) == version:
                self._rerank(cid, now)

    def _rerank(self, cid: str, now: datetime) -> None:
        version = next(self._counter)
        record = self._records.get(cid)
        if record is None:
            self._versions.pop(cid, None)
            self._keys.pop(cid, None)
            return
        self._versions[cid] = version
        busy = _free_load(record, now, self.policy, self._in_flight.get(cid, 0))
        key = None if busy is None else _rank_key(record, busy, self.tiebreak)
        self._keys[cid] = key
        if key is not None:
            heapq.heappush(self._ranked, (key, version))
        deadline = _next_change(record, now, self.policy.health_max_age_s)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, cid, version))
        if len(self._ranked) > 2 * len(self._records) + 64 or len(self._deadlines) > 2 * len(self._records) + 64:
            self._compact()

    def _compact(self) -> None:
        self._ranked = [e for e in self._ranked if self._versions.get(e[0][3]) == e[1]]
        heapq.heapify(self._ranked)
        self._deadlines = [e for e in self._deadlines if self._versions.get(e[1]) == e[2]]
        heapq.heapify(self._deadlines)


def _next_change(record: EngineRecord, now: datetime, health_max_age_s: float) -> datetime | None:
    """When the record's rank changes by itself: its soonest live reservation or its claim lapses,
    or its health verdict goes stale (a prober that stopped writes nothing, so nothing else would tell)."""
    soonest = None
    if record.health_status == "healthy":
        stale = stale_at(record, health_max_age_s)
        if stale is not None and stale > now:
            soonest = stale
    for expires in record.reservations.values():
        if expires > now and (soonest is None or expires < soonest):
            soonest = expires
    claim = record.claim
    if claim is not None and claim.expires_at > now and (soonest is None or claim.expires_at < soonest):
        soonest = claim.expires_at
    return soonest


def reserve(record: EngineRecord, reservation_id: str, now: datetime, ttl_s: float) -> EngineRecord:
    reservations = live_reservations(record, now)
    reservations[reservation_id] = now + timedelta(seconds=ttl_s)
    return msgspec.structs.replace(record, reservations=reservations)


def retry_after_s(
    engines: Iterable[EngineRecord],
    now: datetime,
    default: float = 5.0,
    health_max_age_s: float = DEFAULT_HEALTH_MAX_AGE_S,
) -> float:
    """When capacity is likeliest to return: the soonest reservation expiry on a usable engine."""
    expiries = [
        expires
        for r in engines
        if r.health_status == "healthy"
        and is_health_fresh(r, now, health_max_age_s)
        and effective_state(r, now) == "active"
        for expires in live_reservations(r, now).values()
    ]
    if not expiries:
        return default
    return round(min(max((min(expiries) - now).total_seconds(), 1.0), 30.0), 1)
