"""The one compare-and-set loop, and a watch-fed view of a bucket.

Every mutation of a record goes through `cas_update`: read (or take the
caller's cached revision) → pure change → `update(last=revision)`; on a
revision conflict, re-read and re-apply. `KvView` keeps an in-memory copy of a
bucket from a KV watch, re-established after reconnects, so hot paths
(selection, GET /engines) never do a round trip per record.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    InvalidKeyError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue, _is_key_valid

from shared.bus import EVENTS_MAX_AGE_S, Bus
from shared.errors import describe
from shared.schemas import EngineRecord, StreamRecord, decode_engine, decode_stream

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
DELETE = object()  # a change that removes the key
CAS_ATTEMPTS = 100
# JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequenceErrF, ...ConstantErr).
WRONG_LAST_SEQUENCE = (10071, 10164)


class ConflictExhausted(RuntimeError):
    """A key kept changing under us; the caller retries the whole operation later."""


@dataclass(frozen=True)
class Versioned(Generic[T_co]):  # covariant: a Versioned[EngineRecord] is a Versioned[EngineRecord | None]
    value: T_co
    revision: int


@dataclass(frozen=True)
class Outcome(Generic[T]):
    before: T | None
    after: T | None
    revision: int
    written: bool
    conflicts: int = 0  # compare-and-sets lost to other writers on the way

    def result(self) -> T:
        """`after`, for a change that always yields a value (never None or DELETE)."""
        if self.after is None:
            raise AssertionError("a change that always yields a value left none")
        return self.after


async def read(kv: KeyValue, key: str, decode: Callable[[bytes], T]) -> Versioned[T] | None:
    """Latest value and its revision; None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    if entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
        return None
    return Versioned(decode(entry.value), entry.revision or 0)


async def _read_for_update(kv: KeyValue, key: str, decode: Callable[[bytes], T]) -> Versioned[T | None]:
    """Like `read`, but an absent key comes back as `Versioned(None, revision of its delete marker or 0)`,
    so the write that follows needs no second read to find the revision to compare against."""
    try:
        entry = await kv.get(key)
    except KeyDeletedError as exc:
        return Versioned(None, exc.entry.revision or 0)
    except KeyNotFoundError as exc:  # kv.get reports a delete marker as KeyNotFoundError carrying its entry
        return Versioned(None, (exc.entry.revision or 0) if exc.entry is not None else 0)
    if entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
        return Versioned(None, entry.revision or 0)
    return Versioned(decode(entry.value), entry.revision or 0)


async def cas_update(
    kv: KeyValue,
    key: str,
    change: Callable[[T | None], T | None | object],
    decode: Callable[[bytes], T],
    *,
    cached: Versioned[T | None] | None = None,
    latest: Callable[[], Versioned[T] | None] | None = None,
) -> Outcome[T]:
    """Apply `change` to the current value with compare-and-set until it sticks.

    `change` gets the current value (None if absent) and returns the new value,
    the same object (nothing to write), None (leave absent) or DELETE.
    `cached` may be `Versioned(None, revision)`: the caller believes the key absent
    (deleted at `revision`, or never written when 0) and the first attempt writes
    without reading; a wrong belief costs one conflict and a read.
    `latest` (a watch-fed view's copy of the key) is consulted after a conflict:
    when it already holds a newer revision than the one that lost, the retry
    starts from it instead of paying a read round trip first.
    """
    current = cached
    fresh = cached is None
    conflicts = 0
    for _ in range(CAS_ATTEMPTS):
        if fresh or current is None:  # None only before the first read (then fresh is set too)
            current = await _read_for_update(kv, key, decode)
        before = current.value
        after = change(before)
        if after is before or (after is None and before is None):
            if fresh:
                return Outcome(before, before, current.revision if before is not None else 0, False, conflicts)
            fresh = True  # confirm against the server that nothing changed since our cache
            continue
        try:
            revision = await _write(kv, key, after, current)
        except KeyWrongLastSequenceError:
            conflicts += 1
            newer = latest() if latest is not None else None
            if newer is not None and current is not None and newer.revision > current.revision:
                current, fresh = newer, False
            else:
                fresh = True
            continue
        return Outcome(before, None if after is DELETE else after, revision, True, conflicts)  # type: ignore[arg-type]  # `change` returns T, None or DELETE: no type says "T or one sentinel"
    raise ConflictExhausted(f"{kv._name}/{key}: still conflicting after {CAS_ATTEMPTS} attempts")


async def _write(kv: KeyValue, key: str, value: object, current: Versioned[object]) -> int:
    last = current.revision  # of the value, or of the delete marker when absent (0: never written)
    if value is DELETE:
        try:
            await kv.delete(key, last=last)
        except APIError as exc:  # `delete(last=…)` reports a conflict as a plain BadRequestError
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=exc.description) from None
            raise
        return last + 1
    return await _publish(kv, key, msgspec.json.encode(value), last)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


async def _publish(kv: KeyValue, key: str, data: bytes, last: int) -> int:
    """`kv.update(key, data, last=…)`, on the hot path.

    The same request nats-py sends, without its layers: its ack goes through
    `json.loads` and a dataclass built by reflection, and its request draws a
    random token and wraps the wait in `asyncio.wait_for`; together they cost
    more than the rest of a compare-and-set here. Errors are raised as nats-py raises them.
    """
    if not _is_key_valid(key):
        raise InvalidKeyError(key)
    headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
    js = kv._js
    replies = await _Replies.of(js._nc)
    msg = await replies.request(f"{kv._pre}{key}", data, headers, js._timeout)
    if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
        raise NoStreamResponseError
    ack = _decode_ack(msg.data)
    if ack.error is None:
        return ack.seq
    if ack.error.err_code in WRONG_LAST_SEQUENCE:
        raise KeyWrongLastSequenceError(description=ack.error.description)
    raise APIError.from_error(json.loads(msg.data)["error"])


class _Replies:
    """Requests answered on one wildcard inbox per connection, a counter for tokens and one timer each."""

    _of: weakref.WeakKeyDictionary[NATS, _Replies] = weakref.WeakKeyDictionary()

    @classmethod
    async def of(cls, nc: NATS) -> _Replies:
        replies = cls._of.get(nc)
        if replies is None:
            replies = cls._of[nc] = cls(nc)
        try:
            await replies._subscribed  # at once after the first time
        except Exception:
            cls._of.pop(nc, None)  # the next request subscribes again
            raise
        return replies

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[Msg], asyncio.TimerHandle]] = {}
        self._loop = asyncio.get_running_loop()
        self._subscribed = self._loop.create_task(nc.subscribe(self._prefix + "*", cb=self._on_reply))

    async def request(self, subject: str, data: bytes, headers: dict[str, str], timeout: float) -> Msg:
        token = f"{next(self._tokens):x}"
        future: asyncio.Future[Msg] = self._loop.create_future()
        self._waiting[token] = (future, self._loop.call_later(timeout, self._expire, token))
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            return await future
        finally:
            waiting = self._waiting.pop(token, None)
            if waiting is not None:
                waiting[1].cancel()

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    def _expire(self, token: str) -> None:
        waiting = self._waiting.get(token)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_exception(NatsTimeoutError())


WATCH_INACTIVE_S = 300  # the server drops a watch's consumer this long after its client vanished
MARKER_REASON = "Nats-Marker-Reason"  # on markers the server writes itself (TTL, max age)
# How long a deletion is remembered (by views) and its marker kept (in the bucket). No event
# older than the events stream's max age can still be delivered, so none can refer to a key
# deleted longer ago: past this the marker guards nothing and only slows every view's start.
GONE_HORIZON_S = float(EVENTS_MAX_AGE_S)
PURGE_BATCH = 5_000  # markers purged per call (1-4 s here): a backlog of months is worked off over many calls
PURGE_CONCURRENCY = 64  # purge requests in flight: 1,300-5,000 markers/s on one loaded server here
PURGE_SCAN_TIMEOUT_S = 60.0  # reading one batch of markers takes about a second


def _is_deletion(headers: dict[str, str] | None) -> bool | None:
    """True for a delete/purge marker, False for a value, None for a server marker of a kind we do not know."""
    if not headers:
        return False
    if headers.get(KV_OP) in (KV_DEL, KV_PURGE):
        return True
    reason = headers.get(MARKER_REASON)
    if reason is None:
        return False
    return True if reason in ("MaxAge", "Purge", "Remove") else None


async def purge_markers(kv: KeyValue, before: float, limit: int = PURGE_BATCH) -> int:
    """Remove delete markers written before `before` (epoch seconds), oldest first, at most `limit`;
    returns how many were removed (fewer than `limit`: none older is left).

    A CAS delete leaves one marker per key and the bucket never drops them by itself, so without
    this a bucket grows by one message per deleted key for ever and every view's start replays
    them all. Each marker is purged with its own revision as the bound (JetStream removes the
    key's messages *below* revision + 1), so a value written after the marker is never touched:
    a key absent stays absent, a key written again keeps its value, and a writer holding the
    marker's revision gets a conflict and re-reads, as after any other change.
    """
    old = await _old_markers(kv, before, limit)
    for start in range(0, len(old), PURGE_CONCURRENCY):
        await asyncio.gather(
            *(_purge_marker(kv, key, revision) for key, revision in old[start : start + PURGE_CONCURRENCY])
        )
    return len(old)


async def _old_markers(kv: KeyValue, before: float, limit: int) -> list[tuple[str, int]]:
    """(key, revision) of markers older than `before`: the latest entry per key in stream order (so
    oldest first), headers only, up to the first entry written at or after `before`.

    A push consumer of our own, read in its callback (`fetch` and `next_msg` cost several times
    more per entry), markers never acknowledged: `max_ack_pending` makes the server stop after
    `limit` of them, where an ordered consumer would push the whole backlog however early we stop (and
    its flow control, answered every 0.25 s, stalls the delivery)."""
    js = kv._js
    if (await js.stream_info(kv._stream)).state.messages == 0:
        return []
    found: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        if done.is_set():
            return
        meta = msg.metadata
        if meta.timestamp.timestamp() >= before:
            done.set()
            return
        if _is_deletion(msg.headers):
            found.append((msg.subject[len(kv._pre) :], meta.sequence.stream))
        else:
            await msg.ack()  # a value does not count against `limit`: thousands of old records can't hide the markers
        if meta.num_pending == 0 or len(found) >= limit:
            done.set()

    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.EXPLICIT,
        max_ack_pending=limit,
        headers_only=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=WATCH_INACTIVE_S,
        mem_storage=True,
        num_replicas=1,
    )
    sub = await js.subscribe(f"{kv._pre}>", stream=kv._stream, cb=on_message, manual_ack=True, config=config)
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        if info.num_pending == 0 and not delivered:
            return []  # nothing to deliver (only server markers of kinds we skip, say)
        await asyncio.wait_for(done.wait(), PURGE_SCAN_TIMEOUT_S)
    finally:
        await _drop_subscription(js, kv._stream, sub)
    return found


async def _purge_marker(kv: KeyValue, key: str, revision: int) -> None:
    await kv._js.purge_stream(kv._stream, subject=f"{kv._pre}{key}", seq=revision + 1)


async def _drop_subscription(js: JetStreamContext, stream: str, sub: JetStreamContext.PushSubscription) -> None:
    """Unsubscribe and delete the server-side consumer at once: an ordered consumer whose client
    only unsubscribed lingers on the server for WATCH_INACTIVE_S."""
    try:
        name = (await sub.consumer_info()).name  # the current one: an ordered consumer renames itself on reset
    except Exception as exc:  # gone with the old connection or server
        name = None
        log.debug("watch consumer: %s", describe(exc))
    try:
        await sub.unsubscribe()
    except Exception as exc:  # the subscription may already be gone with the old connection
        log.debug("stopping watch: %s", describe(exc))
    if name is not None:
        try:
            await js.delete_consumer(stream, name)
        except Exception as exc:
            log.debug("deleting watch consumer %s: %s", name, describe(exc))


@dataclass
class _Snapshot:
    """Progress of one watch subscription through the bucket's values at the time it started."""

    last: int
    initial: bool = True
    highest: int = 0
    received: int = 0  # entries delivered so far: a slow start that still progresses is not stuck
    seen: set[str] = field(default_factory=set)


class KvView(Generic[T]):
    """An eventually consistent in-memory copy of one bucket, fed by a KV watch.

    Writers that know a newer revision (their own CAS result) call `remember`
    so the next read on this replica does not start from a stale revision.
    """

    def __init__(
        self, kv: KeyValue, decode: Callable[[bytes], T], bus: Bus | None = None, gone_horizon_s: float = GONE_HORIZON_S
    ) -> None:
        self._kv = kv
        self._decode = decode
        self._items: dict[str, Versioned[T]] = {}
        # Each deleted key's revision and time of deletion, oldest first, so a late `remember` or
        # entry can't revive it and a writer knows the revision to compare against. Kept for
        # `gone_horizon_s` only (see GONE_HORIZON_S): otherwise one entry per key ever deleted.
        self._gone: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._gone_horizon_s = gone_horizon_s
        self._sub: JetStreamContext.PushSubscription | None = None
        self._snapshot: _Snapshot | None = None
        self._turn = asyncio.Lock()  # one (re)subscription at a time: two would leak the first
        self._stopped = False
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()  # set on every change; listeners clear it
        self.listeners: list[Callable[[str, T | None], None]] = []
        self.undecodable = 0
        if bus is not None:
            bus.on_reconnect(self.restart)

    def items(self) -> dict[str, Versioned[T]]:
        return self._items

    def values(self) -> list[T]:
        return [v.value for v in self._items.values()]

    def get(self, key: str) -> Versioned[T] | None:
        return self._items.get(key)

    def gone_revision(self, key: str) -> int:
        """The revision at which the key was seen deleted; 0 if it never was (or is present again,
        or was deleted longer than the horizon ago)."""
        gone = self._gone.get(key)
        return gone[0] if gone is not None else 0

    def remember(self, key: str, value: T | None, revision: int) -> None:
        known = self._items.get(key)
        if (known is not None and known.revision >= revision) or self.gone_revision(key) >= revision:
            return
        self._apply(key, value, revision)

    def forget(self, key: str, revision: int) -> None:
        """The key is gone (we deleted it, or a read found nothing)."""
        if key in self._items:
            self._apply(key, None, max(revision, self._items[key].revision))

    async def start(self, timeout: float = 10.0) -> None:
        """Subscribe and wait for the snapshot; give up only when it made no progress for `timeout`
        (a large bucket takes longer to read, a stuck watch never finishes)."""
        self._stopped = False
        await self.restart()
        received = -1
        while True:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
                return
            except TimeoutError:
                snapshot = self._snapshot
                now = snapshot.received if snapshot is not None else 0
                if now == received:
                    raise TimeoutError(
                        f"{self._kv._name}: watch made no progress for {timeout}s ({now} entries read)"
                    ) from None
                received = now

    async def restart(self) -> None:
        """(Re)subscribe from the latest values; called on start and after every reconnect."""
        async with self._turn:
            await self._unsubscribe()
            if self._stopped:  # a reconnect after `stop`: stay stopped
                return
            # The snapshot is complete once we saw its last sequence (a "nothing pending" signal can
            # come before the values already on their way).
            last = (await self._kv._js.stream_info(self._kv._stream)).state.last_seq
            snapshot = self._snapshot = _Snapshot(last)
            # An ordered push consumer on the bucket, as `kv.watchall()` makes, but handled in its
            # callback: the watcher's entry objects, queue and per-entry timeout cost more than the rest
            # of a view update (one arrives for every write, so on every selection and event).
            self._sub = await self._kv._js.subscribe(
                f"{self._kv._pre}>",
                stream=self._kv._stream,
                cb=functools.partial(self._on_message, snapshot),
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=WATCH_INACTIVE_S,
            )
            info = await self._sub.consumer_info()
            if info.num_pending == 0 and self._sub.delivered == 0:
                self._snapshot_step(snapshot, 0)

    async def stop(self) -> None:
        async with self._turn:
            self._stopped = True
            await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await _drop_subscription(self._kv._js, self._kv._stream, sub)

    async def _on_message(self, snapshot: _Snapshot, msg: Msg) -> None:
        if snapshot is not self._snapshot:  # a message for a subscription we already replaced
            return
        meta = msg.metadata
        snapshot.received += 1
        deleted = _is_deletion(msg.headers)
        if deleted is None:  # a marker of a kind we do not know: not a value
            self._snapshot_step(snapshot, meta.num_pending)
            return
        revision = meta.sequence.stream
        key = msg.subject[len(self._kv._pre) :]
        if snapshot.initial:
            snapshot.highest = max(snapshot.highest, revision)
            if not deleted:  # a deleted key leaves `_items` through its marker, not the stale check
                snapshot.seen.add(key)
        if deleted:
            self._apply(key, None, revision, meta.timestamp.timestamp())
        else:
            self._on_entry(key, msg.data, revision)
        self._snapshot_step(snapshot, meta.num_pending)

    def _snapshot_step(self, snapshot: _Snapshot, pending: int) -> None:
        if snapshot.initial and pending == 0 and snapshot.highest >= snapshot.last:
            for stale in set(self._items) - snapshot.seen:  # deleted while we were not watching
                self._apply(stale, None, self._items[stale].revision)
            snapshot.initial = False
            snapshot.seen = set()
            self.ready.set()

    def _on_entry(self, key: str, data: bytes, revision: int) -> None:
        known = self._items.get(key)
        # Checked before decoding: a writer's own updates come back through the watch after
        # `remember` has stored them, and decoding them again would be wasted work.
        if (known is not None and known.revision >= revision) or self.gone_revision(key) > revision:
            return
        try:
            value = self._decode(data)
        except msgspec.DecodeError as exc:
            self.undecodable += 1
            log.warning("%s/%s: cannot decode stored value: %s", self._kv._name, key, exc)
            return
        self._apply(key, value, revision)

    def _apply(self, key: str, value: T | None, revision: int, at: float | None = None) -> None:
        if value is None:
            self._remember_gone(key, revision, time.time() if at is None else at)
            if self._items.pop(key, None) is None:
                return
        else:
            self._gone.pop(key, None)
            self._items[key] = Versioned(value, revision)
        self.changed.set()
        for listener in self.listeners:
            listener(key, value)

    def _remember_gone(self, key: str, revision: int, at: float) -> None:
        """Record a deletion at the end (oldest first) and forget those past the horizon; markers
        replayed at start arrive oldest first, so a backlog of months costs no memory."""
        self._gone[key] = (revision, at)
        self._gone.move_to_end(key)
        horizon = time.time() - self._gone_horizon_s
        while self._gone and next(iter(self._gone.values()))[1] < horizon:
            self._gone.popitem(last=False)


class RecordViews:
    """Watch-fed copies of both record buckets: what the state-keeper and the gateway read from."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.engines: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
        self.streams: KvView[StreamRecord] = KvView(bus.streams, decode_stream, bus)

    async def start(self) -> None:
        await self.engines.start()
        await self.streams.start()

    async def stop(self) -> None:
        await self.engines.stop()
        await self.streams.stop()


async def wait_for_value(view: KvView[T], key: str, check: Callable[[T], bool], timeout_s: float) -> T | None:
    """The view's value of `key` once `check` holds for it, or None after `timeout_s`.

    Woken by the view's own changes (a listener), so it costs nothing while it waits.
    """
    found = view.get(key)
    if found is not None and check(found.value):
        return found.value
    seen = asyncio.Event()
    shown: list[T] = []

    def on_change(changed: str, value: T | None) -> None:
        if changed == key and value is not None and check(value):
            shown.append(value)
            seen.set()

    view.listeners.append(on_change)
    try:
        await asyncio.wait_for(seen.wait(), max(timeout_s, 0.0))
    except TimeoutError:
        return None
    finally:
        view.listeners.remove(on_change)
    return shown[0]
