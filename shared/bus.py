"""The NATS connection and the JetStream layout every service relies on.

`connect` fails fast with a clear message when NATS is absent (the first
attempt is bounded), logs disconnects and reconnects in one line each, and
lets services register callbacks to re-establish KV watches after a reconnect
(watchers go silent ~10 s after a server restart otherwise). A connection
closed for good sets `Bus.lost`, on which the service exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from shared import auth, names
from shared.config import Config
from shared.errors import describe

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 11)
EVENTS_MAX_AGE_S = 24 * 3600
DUPLICATE_WINDOW_S = 120
LAYOUT_ATTEMPTS = 5
RECONNECT_CALLBACK_ATTEMPTS = 30


class BusError(RuntimeError):
    """NATS is unreachable or unsuitable; the message says what to do."""


@dataclass(frozen=True)
class Identity:
    """Who this process is on the bus: no key (an open server: it creates what it needs, as before
    authentication), or a role's key (it binds to what admin created and never changes it)."""

    seed: str = ""
    role: str = ""  # the key file's name when it is a role's (DIR/<role>.nk), else ""
    public_key: str = ""

    @classmethod
    def of(cls, config: Config) -> Identity:
        if not config.nats_nkey:
            return cls()
        path = Path(config.nats_nkey)
        try:
            seed = auth.read_seed(path)
        except auth.AuthError as exc:
            raise BusError(f"NATS_NKEY: {exc}") from None
        return cls(seed=seed, role=auth.role_of(path), public_key=auth.public_key(seed))

    @property
    def creates_layout(self) -> bool:
        return not self.seed or self.role == auth.ADMIN

    @property
    def who(self) -> str:
        if not self.seed:
            return "an anonymous connection (NATS_NKEY is not set)"
        return f"the key {self.public_key[:12]}… ({self.role or 'unknown role'})"

    def connect_options(self) -> dict[str, str]:
        if not self.seed:
            return {}
        return {"nkeys_seed_str": self.seed, "inbox_prefix": auth.inbox_prefix(self.public_key)}


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    engines: KeyValue
    streams: KeyValue
    leases: KeyValue
    identity: Identity = field(default_factory=Identity)
    _on_reconnect: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Set when the connection closed for good without us closing it (the server sent an error
    # nats-py treats as fatal: a payload over max_payload, revoked credentials): it will never
    # reconnect, so the service must exit and be restarted rather than retry for ever.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""
    _closing: bool = False  # set by close(): the disconnect that follows is planned, not news
    _rounds: asyncio.Task[None] | None = None  # the reconnect callbacks' task, held so it is not collected
    _again: bool = False

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_reconnect.append(callback)

    def _reconnected(self) -> None:
        """One round of callbacks at a time: a reconnect during a round asks for one more round
        after it instead of a second one beside it (two restarts of one view at once leaked a
        subscription)."""
        if self._rounds is not None and not self._rounds.done():
            self._again = True
            return
        self._rounds = asyncio.get_running_loop().create_task(self._run_rounds())

    async def _run_rounds(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            await asyncio.gather(*(self._retrying(callback) for callback in list(self._on_reconnect)))

    async def _retrying(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run one callback until it succeeds: right after a cluster node dies, re-creating a watch
        times out while the bucket's stream elects a leader, and a watch not re-created stays silent."""
        for attempt in range(1, RECONNECT_CALLBACK_ATTEMPTS + 1):
            try:
                await callback()
                return
            except Exception as exc:  # a failing re-subscribe must not stop the others
                name = getattr(callback, "__qualname__", callback)
                if self.nc.is_closed or attempt == RECONNECT_CALLBACK_ATTEMPTS:
                    log.warning("after reconnect: %s failed: %s; giving up", name, describe(exc))
                    return
                log.warning(
                    "after reconnect: %s failed: %s; %d attempts left",
                    name,
                    describe(exc),
                    RECONNECT_CALLBACK_ATTEMPTS - attempt,
                )
                await asyncio.sleep(min(0.5 * attempt, 5.0))

    def _closed(self) -> None:
        if self._closing:
            return
        error = self.nc.last_error
        self.lost_reason = describe(error) if error is not None else "closed by the client library"
        log.error("nats: connection closed for good (%s); it will not reconnect", self.lost_reason)
        self.lost.set()

    async def close(self) -> None:
        self._closing = True
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("drain did not finish cleanly: %s", exc)
            await self.nc.close()


async def connect(config: Config, name: str) -> Bus:
    """Connect, check the server, and make sure the stream and buckets exist."""
    holder: list[Bus] = []

    identity = Identity.of(config)

    refused = asyncio.Event()  # the server refused our key (or our lack of one) while connecting

    async def error_cb(exc: Exception) -> None:
        if auth.refused(exc) and not holder:
            refused.set()  # retrying cannot help: stop the first connect now, with the reason
            return
        denied = auth.violation(str(exc))
        if denied is not None:
            log.error("%s", auth.explain(denied, identity.role))
        else:
            log.warning("nats: %s", describe(exc))

    async def disconnected_cb() -> None:
        if holder and holder[0]._closing:
            log.info("nats: disconnected from %s (closing)", config.nats_url)
        else:
            log.warning("nats: disconnected from %s", config.nats_url)

    async def closed_cb() -> None:
        if holder:  # before that, `connect` itself fails (or closes the connection it gave up on)
            holder[0]._closed()

    async def reconnected_cb() -> None:
        log.info("nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else config.nats_url)
        if holder:
            holder[0]._reconnected()

    try:
        nc = await _first_connect(
            nats.connect(
                servers=config.nats_url.split(","),
                name=name,
                connect_timeout=min(config.nats_connect_timeout_s, 2.0),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                closed_cb=closed_cb,
                **identity.connect_options(),
                **_tls(config),
            ),
            refused,
            config.nats_connect_timeout_s,
        )
    except nats.errors.AuthorizationError:
        raise BusError(
            f"NATS at {config.nats_url} refused {identity.who}: the server requires a key its "
            "authorization config knows; set NATS_NKEY to this service's role key (e.g. data/auth/<role>.nk)"
        ) from None
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise BusError(
            f"cannot connect to NATS at {config.nats_url} ({type(exc).__name__}): is nats-server running? "
            "Set NATS_URL to its address."
        ) from None
    version = nc.connected_server_version
    try:
        require_server((version.major, version.minor), bool(nc._server_info.get("jetstream")), config.nats_url)
    except BusError:
        await nc.close()
        raise
    js = nc.jetstream(timeout=5)
    if identity.creates_layout:
        await _ensure_layout_retrying(nc, js, config)
    else:
        await _require_layout(nc, js, config, identity)
    bus = Bus(
        nc=nc,
        js=js,
        engines=await js.key_value(names.ENGINES_BUCKET),
        streams=await js.key_value(names.STREAMS_BUCKET),
        leases=await js.key_value(names.LEASES_BUCKET),
        identity=identity,
    )
    holder.append(bus)
    log.info("nats: connected to %s (server %s)", config.nats_url, nc.connected_server_version)
    return bus


def _tls(config: Config) -> dict[str, Any]:
    try:
        return auth.tls_options(config.nats_tls_ca, config.nats_tls_cert, config.nats_tls_key)
    except auth.AuthError as exc:
        raise BusError(str(exc)) from None


async def _first_connect(connecting: Awaitable[Client], refused: asyncio.Event, limit_s: float) -> Client:
    """`connecting`, bounded by `limit_s`; AuthorizationError as soon as `refused` is set (nats-py
    would otherwise retry a refused key until the timeout, and report a timeout)."""
    attempt = asyncio.ensure_future(connecting)
    verdict = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait({attempt, verdict}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        verdict.cancel()
    if attempt in done:
        return attempt.result()
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    if verdict in done:
        raise nats.errors.AuthorizationError
    raise TimeoutError


def require_server(version: tuple[int, int], jetstream: bool, url: str) -> None:
    """Refuse servers that cannot hold our layout, with what to do about it."""
    if version < MIN_SERVER_VERSION:
        raise BusError(
            f"nats-server {version[0]}.{version[1]} at {url} is too old: per-message TTL needs nats-server >= "
            f"{MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]}; upgrade it"
        )
    if not jetstream:
        raise BusError(f"nats-server at {url} has JetStream disabled; start it with -js")


def events_stream_config(config: Config) -> api.StreamConfig:
    return api.StreamConfig(
        name=names.EVENTS_STREAM,
        subjects=list(names.EVENT_SUBJECTS),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=config.nats_replicas,
        allow_direct=True,  # the gateway reads it by direct gets (shared/stream_read.py), not a consumer
    )


def history_stream_config(config: Config) -> api.StreamConfig:
    """The gateway's fleet samples: a stream of their own, aged out by JetStream, so history never
    weighs on the engine and stream buckets. Deduplicated by `Nats-Msg-Id` (one per interval)."""
    return api.StreamConfig(
        name=names.HISTORY_STREAM,
        subjects=[names.HISTORY_SAMPLE],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=config.history_max_age_h * 3600,
        duplicate_window=min(DUPLICATE_WINDOW_S, config.history_max_age_h * 3600),
        num_replicas=config.nats_replicas,
        allow_direct=True,  # read by direct gets, as ACE_EVENTS
    )


def bucket_stream_config(bucket: str, config: Config) -> api.StreamConfig:
    """A KV bucket's backing stream, as nats-py builds it, with direct get and per-message TTL."""
    return api.StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msgs_per_subject=1,
        max_consumers=-1,
        max_msgs=-1,
        storage=api.StorageType.FILE,
        num_replicas=config.nats_replicas,
    )


async def ensure_layout(js: JetStreamContext, config: Config) -> None:
    """Create or update the events and history streams and the buckets; safe to run from every replica."""
    wanted = [events_stream_config(config), history_stream_config(config)] + [
        bucket_stream_config(bucket, config)
        for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET, names.LEASES_BUCKET)
    ]
    for stream in wanted:
        await _ensure_stream(js, stream)


async def _ensure_layout_retrying(nc: Client, js: JetStreamContext, config: Config) -> None:
    """`ensure_layout`, retried: a fresh cluster's JetStream API times out while replicas race to
    create the same replicated streams (measured: 2 of 3 concurrent starts timed out after 5 s),
    and a stream another replica is still creating can be "in use" to `add` yet "not found" to
    `update` (seen once in the cluster chaos scenario)."""
    for attempt in range(1, LAYOUT_ATTEMPTS + 1):
        try:
            await ensure_layout(js, config)
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, NotFoundError) as exc:
            if attempt == LAYOUT_ATTEMPTS:
                await nc.close()
                raise BusError(
                    f"JetStream at {config.nats_url} did not answer while creating the stream and buckets "
                    f"({attempt} attempts, last: {type(exc).__name__}): does the cluster have a meta leader?"
                ) from None
            log.warning(
                "creating the stream and buckets failed (%s); %d attempts left",
                type(exc).__name__,
                LAYOUT_ATTEMPTS - attempt,
            )
            await asyncio.sleep(0.5 * attempt)


async def _require_layout(nc: Client, js: JetStreamContext, config: Config, identity: Identity) -> None:
    """A role other than admin binds to the stream and buckets: missing ones (or ones made before the
    streams it reads by direct get had `allow_direct`) are an error saying who creates them (it may
    not, and must not quietly run without them)."""
    missing = []
    outdated = []
    for stream in auth.LAYOUT:
        try:
            info = await js.stream_info(stream)
            if stream in auth.DIRECT_READS.get(identity.role, ()) and not info.config.allow_direct:
                outdated.append(stream)
        except NotFoundError:
            missing.append(stream)
        except nats.errors.TimeoutError:
            await nc.close()
            raise BusError(
                f"JetStream at {config.nats_url} did not answer about {stream} (is the role {identity.role or '?'} "
                "granted stream info? see the server log for a permissions violation)"
            ) from None
    if missing:
        await nc.close()
        raise BusError(
            f"{', '.join(missing)} missing on {config.nats_url}: with a role key ({identity.role or identity.public_key}) "
            "services bind to the layout admin made and never create it; run `aceorch setup` (admin key) first"
        )
    if outdated:
        await nc.close()
        raise BusError(
            f"{', '.join(outdated)} on {config.nats_url} answer no direct gets (allow_direct is off: made by an "
            f"older version), and the role {identity.role} reads them that way; run `aceorch setup` (admin key) "
            "to update the layout"
        )


async def _ensure_stream(js: JetStreamContext, stream: api.StreamConfig) -> None:
    assert stream.name is not None, "our stream configs are built with a name"
    try:
        info = await js.stream_info(stream.name)
    except NotFoundError:
        try:
            await js.add_stream(stream)
            return
        except nats.js.errors.BadRequestError:
            pass  # another replica created it between our two calls
    else:
        current = info.config.as_dict()
        if all(current.get(key) == value for key, value in stream.as_dict().items()):
            return  # already as wanted: an update would be one more clustered proposal for nothing
    await js.update_stream(stream)
