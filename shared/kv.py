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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import (
    APIError,
    InvalidKeyError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue, _is_key_valid

from shared.bus import Bus
from shared.schemas import EngineRecord, StreamRecord, decode_engine, decode_stream

log = logging.getLogger(__name__)

T = TypeVar("T")
DELETE = object()  # a change that removes the key
CAS_ATTEMPTS = 100
# JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequenceErrF, ...ConstantErr).
WRONG_LAST_SEQUENCE = (10071, 10164)


class ConflictExhausted(RuntimeError):
    """A key kept changing under us; the caller retries the whole operation later."""


@dataclass(frozen=True)
class Versioned(Generic[T]):
    value: T
    revision: int


@dataclass(frozen=True)
class Outcome(Generic[T]):
    before: T | None
    after: T | None
    revision: int
    written: bool
    conflicts: int = 0  # compare-and-sets lost to other writers on the way


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
    cached: Versioned[T] | None = None,
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
        if fresh:
            current = await _read_for_update(kv, key, decode)
        before = current.value if current else None
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
        return Outcome(before, None if after is DELETE else after, revision, True, conflicts)  # type: ignore[arg-type]
    raise ConflictExhausted(f"{kv._name}/{key}: still conflicting after {CAS_ATTEMPTS} attempts")


async def _write(kv: KeyValue, key: str, value: object, current: Versioned) -> int:
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
    headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
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
        self._waiting: dict[str, tuple[asyncio.Future, asyncio.TimerHandle]] = {}
        self._loop = asyncio.get_running_loop()
        self._subscribed = self._loop.create_task(nc.subscribe(self._prefix + "*", cb=self._on_reply))

    async def request(self, subject: str, data: bytes, headers: dict[str, str], timeout: float):
        token = f"{next(self._tokens):x}"
        future = self._loop.create_future()
        self._waiting[token] = (future, self._loop.call_later(timeout, self._expire, token))
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            return await future
        finally:
            waiting = self._waiting.pop(token, None)
            if waiting is not None:
                waiting[1].cancel()

    async def _on_reply(self, msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix):])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    def _expire(self, token: str) -> None:
        waiting = self._waiting.get(token)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_exception(NatsTimeoutError())


WATCH_INACTIVE_S = 300  # the server drops a watch's consumer this long after its client vanished
MARKER_REASON = "Nats-Marker-Reason"  # on markers the server writes itself (TTL, max age)


@dataclass
class _Snapshot:
    """Progress of one watch subscription through the bucket's values at the time it started."""

    last: int
    initial: bool = True
    highest: int = 0
    seen: set[str] = field(default_factory=set)


class KvView(Generic[T]):
    """An eventually consistent in-memory copy of one bucket, fed by a KV watch.

    Writers that know a newer revision (their own CAS result) call `remember`
    so the next read on this replica does not start from a stale revision.
    """

    def __init__(self, kv: KeyValue, decode: Callable[[bytes], T], bus: Bus | None = None) -> None:
        self._kv = kv
        self._decode = decode
        self._items: dict[str, Versioned[T]] = {}
        self._gone: dict[str, int] = {}  # revision of each key's deletion, so late entries can't revive it
        self._sub = None
        self._snapshot: _Snapshot | None = None
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
        """The revision at which the key was seen deleted; 0 if it never was (or is present again)."""
        return self._gone.get(key, 0)

    def remember(self, key: str, value: T | None, revision: int) -> None:
        known = self._items.get(key)
        if (known is not None and known.revision >= revision) or self._gone.get(key, 0) >= revision:
            return
        self._apply(key, value, revision)

    def forget(self, key: str, revision: int) -> None:
        """The key is gone (we deleted it, or a read found nothing)."""
        if key in self._items:
            self._apply(key, None, max(revision, self._items[key].revision))

    async def start(self, timeout: float = 10.0) -> None:
        await self.restart()
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def restart(self) -> None:
        """(Re)subscribe from the latest values; called on start and after every reconnect."""
        await self.stop()
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
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the subscription may already be gone with the old connection
                log.debug("stopping watch: %s", exc)

    async def _on_message(self, snapshot: _Snapshot, msg) -> None:
        if snapshot is not self._snapshot:  # a message for a subscription we already replaced
            return
        meta = msg.metadata
        revision = meta.sequence.stream
        key = msg.subject[len(self._kv._pre):]
        headers = msg.headers
        deleted = False
        if headers:
            if headers.get(KV_OP) in (KV_DEL, KV_PURGE):
                deleted = True
            elif (reason := headers.get(MARKER_REASON)) is not None:
                deleted = reason in ("MaxAge", "Purge", "Remove")
                if not deleted:  # a marker of a kind we do not know: not a value
                    self._snapshot_step(snapshot, meta.num_pending)
                    return
        if snapshot.initial:
            snapshot.seen.add(key)
            snapshot.highest = max(snapshot.highest, revision)
        self._on_entry(key, None if deleted else msg.data, revision)
        self._snapshot_step(snapshot, meta.num_pending)

    def _snapshot_step(self, snapshot: _Snapshot, pending: int) -> None:
        if snapshot.initial and pending == 0 and snapshot.highest >= snapshot.last:
            for stale in set(self._items) - snapshot.seen:  # deleted while we were not watching
                self._apply(stale, None, self._items[stale].revision)
            snapshot.initial = False
            self.ready.set()

    def _on_entry(self, key: str, data: bytes | None, revision: int) -> None:
        if data is None:
            self._apply(key, None, revision)
            return
        known = self._items.get(key)
        # Checked before decoding: a writer's own updates come back through the watch after
        # `remember` has stored them, and decoding them again would be wasted work.
        if (known is not None and known.revision >= revision) or self._gone.get(key, 0) > revision:
            return
        try:
            value = self._decode(data)
        except msgspec.DecodeError as exc:
            self.undecodable += 1
            log.warning("%s/%s: cannot decode stored value: %s", self._kv._name, key, exc)
            return
        self._apply(key, value, revision)

    def _apply(self, key: str, value: T | None, revision: int) -> None:
        if value is None:
            self._gone[key] = revision
            if self._items.pop(key, None) is None:
                return
        else:
            self._gone.pop(key, None)
            self._items[key] = Versioned(value, revision)
        self.changed.set()
        for listener in self.listeners:
            listener(key, value)


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
