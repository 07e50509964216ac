"""The `state-keeper` micro service: six request/reply endpoints (DESIGN §3).

Each request is handled in its own task (bounded), because micro runs a
subscription's handler one message at a time and a slow reply would make
every caller behind it time out.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import secrets
import uuid
import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import msgspec
import nats.errors
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from services.state_keeper.stats import Stats
from services.state_keeper.store import Store
from shared import names
from shared.config import Config
from shared.decode_errors import describe_decode_error
from shared.errors import describe
from shared.kv import ConflictExhausted, Outcome
from shared.policy.engines import tidy
from shared.policy.events import ClaimRefused, apply_claim, apply_release
from shared.policy.freshness import health_max_age_of, with_effective_health
from shared.policy.selection import CandidateIndex, SelectionPolicy, is_candidate, reserve, retry_after_s
from shared.schemas import (
    ClaimReply,
    ClaimRequest,
    EngineDemand,
    EngineList,
    EngineRecord,
    ErrorReply,
    GetRequest,
    ListRequest,
    ReleaseReply,
    ReleaseRequest,
    SelectReply,
    SelectRequest,
    StreamList,
    StreamListRequest,
    decoder,
    encode,
    utcnow,
)

log = logging.getLogger("state-keeper")
S = TypeVar("S", bound=msgspec.Struct)

MAX_REQUEST_BYTES = 64 * 1024
SELECT_ATTEMPTS = 20
# Re-reads of a write whose reply timed out (each bounded by the KV timeout) before answering 503.
RESOLVE_ATTEMPTS = 3
VERSION = "0.1.0"


class RequestError(Exception):
    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class Endpoints:
    def __init__(self, store: Store, config: Config, stats: Stats) -> None:
        self.store = store
        self.config = config
        self.stats = stats
        self.policy = SelectionPolicy(
            max_streams_per_engine=config.max_streams_per_engine,
            share_content=config.share_content,
            reservation_ttl_s=config.reservation_ttl_s,
            health_max_age_s=health_max_age_of(config),
        )
        self._salt = random.getrandbits(32)
        self._ranks: dict[str, int] = {}
        self.candidates = CandidateIndex(self.policy, self._rank)
        now = utcnow()
        for container_id, item in store.engines.items().items():
            self.candidates.update(container_id, item.value, now)
        store.engines.listeners.append(
            lambda container_id, record: self.candidates.update(container_id, record, utcnow())
        )
        # Reservation ids: unique per process start plus a counter (uuid4 reads os.urandom per call).
        self._reservation_prefix = secrets.token_hex(8)
        self._reservation_numbers = itertools.count(1)
        self._slots = asyncio.Semaphore(512)
        self._tasks: set[asyncio.Task[None]] = set()

    def _rank(self, container_id: str) -> int:
        """This replica's own order among equally good engines (a salted hash, memoised):
        two replicas picking the same engine would only make one of them lose the CAS and retry."""
        rank = self._ranks.get(container_id)
        if rank is None:
            rank = self._ranks[container_id] = zlib.crc32(container_id.encode(), self._salt)
        return rank

    async def start(self) -> Service:
        service = await add_service(
            self.store.bus.nc,
            name=names.SERVICE_NAME,
            version=VERSION,
            description="engine and stream records, selection and claims",
            stats_handler=lambda _endpoint: self.stats.snapshot(),
        )
        routes: list[tuple[str, str, Callable[[bytes], Awaitable[msgspec.Struct]]]] = [
            ("select", names.ENGINE_SELECT, self.select),
            ("list", names.ENGINE_LIST, self.list_engines),
            ("get", names.ENGINE_GET, self.get_engine),
            ("claim", names.ENGINE_CLAIM, self.claim),
            ("release", names.ENGINE_RELEASE, self.release),
            ("streams", names.STREAM_LIST, self.list_streams),
        ]
        for name, subject, handler in routes:
            await service.add_endpoint(name=name, subject=subject, handler=self._spawning(name, handler))
        return service

    async def finish(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    def _spawning(
        self, name: str, handler: Callable[[bytes], Awaitable[msgspec.Struct]]
    ) -> Callable[[Request], Awaitable[None]]:
        async def on_request(request: Request) -> None:
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._answer(name, handler, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_request

    async def _answer(self, name: str, handler: Callable[[bytes], Awaitable[msgspec.Struct]], request: Request) -> None:
        try:
            try:
                reply = await handler(request.data)
            except RequestError as exc:
                if exc.code == 400:
                    self.stats.bad_request(name)
                await _respond_error(request, exc.code, str(exc), exc.retry_after)
                return
            except ConflictExhausted as exc:
                await _respond_error(request, 503, f"busy: {exc}", 0.5)
                return
            except (TimeoutError, nats.errors.Error) as exc:
                # KV briefly unwritable (a cluster electing a stream leader, a reconnect): retryable.
                log.warning("%s: KV unavailable (%s); answered 503", name, describe(exc))
                await _respond_error(request, 503, f"unavailable: {type(exc).__name__}", 1.0)
                return
            except Exception:
                log.exception("%s failed", name)
                await _respond_error(request, 500, "internal error")
                return
            await request.respond(encode(reply))
        except Exception as exc:  # the requester may be gone or the connection down
            log.debug("could not reply on %s: %s", name, exc)
        finally:
            self._slots.release()

    # ------------------------------------------------------------ handlers

    async def select(self, data: bytes) -> SelectReply:
        request = _decode(SelectRequest, data)
        # The proxy's exclusions, then engines deleted since our view last heard of them (at most 64 + 20).
        unwanted: set[str] = set(request.exclude)
        for _ in range(SELECT_ATTEMPTS):
            now = utcnow()
            choice = self.candidates.choose(now, request.content_key, self.store.contents.playing, unwanted)
            if choice is None:
                return await self._no_capacity(request, now)
            container_id = choice.engine.container_id
            reservation_id = f"{self._reservation_prefix}{next(self._reservation_numbers):x}"
            # Counted as load while the write is in flight, so concurrent requests spread out.
            self.candidates.add_in_flight(container_id, 1, now)
            try:
                outcome = await self._update_engine(
                    "select", container_id, functools.partial(self._reserve, reservation_id=reservation_id, now=now)
                )
            finally:
                self.candidates.add_in_flight(container_id, -1, utcnow())
            if outcome.after is None:
                unwanted.add(container_id)
                continue
            if reservation_id in outcome.after.reservations:
                self.stats.selection("shared" if choice.shared else "selected")
                return SelectReply(
                    engine=outcome.after,
                    reservation_id=reservation_id,
                    reservation_expires_at=outcome.after.reservations[reservation_id],
                    shared=choice.shared,
                )
            # Someone else changed the engine first and it no longer qualifies: choose again.
        raise ConflictExhausted(f"selection kept losing races after {SELECT_ATTEMPTS} attempts")

    def _reserve(self, record: EngineRecord | None, reservation_id: str, now: datetime) -> EngineRecord | None:
        if record is not None and reservation_id in record.reservations:
            return record  # a write whose reply timed out had applied (the id is ours alone)
        if record is None or not is_candidate(record, now, self.policy):
            return record
        return reserve(tidy(record, now), reservation_id, now, self.policy.reservation_ttl_s)

    async def _no_capacity(self, request: SelectRequest, now: datetime) -> NoReturn:
        self.stats.selection("no_capacity")
        await self.store.bus.nc.publish(names.ENGINE_DEMAND, encode(EngineDemand(content_key=request.content_key)))
        raise RequestError(
            503,
            "no_capacity",
            retry_after_s(self.store.engines.values(), now, health_max_age_s=self.policy.health_max_age_s),
        )

    async def list_engines(self, data: bytes) -> EngineList:
        request = _decode(ListRequest, data)
        now = utcnow()
        engines = sorted((self._shown(r, now) for r in self.store.engines.values()), key=lambda r: r.container_id)
        return EngineList(
            engines=[
                r
                for r in engines
                if (request.health_status is None or r.health_status == request.health_status)
                and (request.state is None or r.state == request.state)
            ]
        )

    async def get_engine(self, data: bytes) -> EngineRecord:
        request = _decode(GetRequest, data)
        found = await self.store.get_engine(request.container_id)
        if found is None:
            raise RequestError(404, f"engine {request.container_id} not found")
        return self._shown(found.value, utcnow())

    def _shown(self, record: EngineRecord, now: datetime) -> EngineRecord:
        """A record as answered: lapsed reservations and claims dropped, a stale verdict read as unknown."""
        return with_effective_health(tidy(record, now), now, self.policy.health_max_age_s)

    async def claim(self, data: bytes) -> ClaimReply:
        request = _decode(ClaimRequest, data)
        claim_id = uuid.uuid4().hex
        now = utcnow()
        outcome = await self._update_claims(
            "claim", request.container_id, lambda r: apply_claim(r, request, claim_id, now, self.config.claim_ttl_s)
        )
        record = outcome.result()
        claim = record.claim
        assert claim is not None, "apply_claim returns a claimed record or raises"
        if claim.claim_id != claim_id:
            log.info("engine %s: %s already holds its %s claim", record.container_name, request.holder, claim.purpose)
        else:
            log.info("engine %s claimed for %s by %s", record.container_name, request.purpose, request.holder)
        return ClaimReply(claim_id=claim.claim_id)

    async def release(self, data: bytes) -> ReleaseReply:
        request = _decode(ReleaseRequest, data)
        now = utcnow()
        await self._update_claims("release", request.container_id, lambda r: apply_release(r, request.claim_id, now))
        return ReleaseReply(ok=True)

    async def _update_claims(
        self, name: str, container_id: str, change: Callable[[EngineRecord], EngineRecord]
    ) -> Outcome[EngineRecord]:
        def guarded(record: EngineRecord | None) -> EngineRecord:
            if record is None:
                raise RequestError(404, f"engine {container_id} not found")
            return change(record)

        try:
            return await self._update_engine(name, container_id, guarded, use_cache=False)
        except ClaimRefused as exc:
            raise RequestError(exc.code, str(exc)) from None

    async def _update_engine(
        self, name: str, container_id: str, change: Callable[[EngineRecord | None], object], *, use_cache: bool = True
    ) -> Outcome[EngineRecord]:
        """`store.update_engine`, where a timeout means "unknown", not "failed" (DESIGN §9).

        The write may have been applied although its reply never came. `change` is
        idempotent (it returns a record that already holds its effect unchanged), so running it
        again on a fresh read either finds the effect or writes it once — the compare-and-set
        keeps a late original and the re-run from both landing. Only when every re-read times
        out too is the outcome left unknown and the request answered as unavailable.
        """
        for attempt in range(1, RESOLVE_ATTEMPTS + 1):
            try:
                return await self.store.update_engine(container_id, change, use_cache=use_cache and attempt == 1)
            except TimeoutError:
                log.warning(
                    "%s: write to engine %s timed out, outcome unknown; re-reading (%d of %d)",
                    name,
                    container_id,
                    attempt,
                    RESOLVE_ATTEMPTS,
                )
        return await self.store.update_engine(container_id, change, use_cache=False)

    async def list_streams(self, data: bytes) -> StreamList:
        request = _decode(StreamListRequest, data)
        streams = sorted(
            (
                s
                for s in self.store.streams.values()
                if (request.status is None or s.status == request.status)
                and (request.container_id is None or s.container_id == request.container_id)
            ),
            key=lambda s: s.stream_id,
        )
        return StreamList(streams=streams)


_DECODERS: dict[type, Callable[[bytes], Any]] = {}


def _decode(kind: type[S], data: bytes) -> S:
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestError(400, f"request of {len(data)} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")
    decode: Callable[[bytes], S] = _DECODERS.get(kind) or _DECODERS.setdefault(kind, decoder(kind))
    try:
        return decode(data if data.strip() else b"{}")
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RequestError(400, describe_decode_error(exc, data, kind, "request")) from None


async def _respond_error(request: Request, code: int, message: str, retry_after: float | None = None) -> None:
    body = encode(ErrorReply(error=message, code=code, retry_after_s=retry_after))
    # micro needs the code as a string; the JSON body carries the details (DESIGN §9).
    await request.respond_error(str(code), message.splitlines()[0][:200], data=body)
