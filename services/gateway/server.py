"""The gateway's body: views, live feed and metrics up first, then uvicorn until `stop`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from services.gateway.app import build_app
from services.gateway.events import EventLog
from services.gateway.fleet import Fleet
from services.gateway.history import History
from services.gateway.live import LiveFeed
from services.gateway.metrics import Metrics
from services.gateway.protocol import head_deadline_protocol
from shared.bus import Bus
from shared.config import Config
from shared.policy.freshness import health_max_age_of

log = logging.getLogger("gateway")

GRACEFUL_SHUTDOWN_S = 3  # uvicorn takes whole seconds
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is a 400
# Connections beyond the live feed's cap; past the sum uvicorn answers 503 at once instead of queueing.
MAX_OTHER_CONNECTIONS = 1000
KEEP_ALIVE_S = 5  # idle keep-alive connections close after this (uvicorn's default, said out loud)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service shell owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    fleet = Fleet(bus, health_max_age_of(config))
    await fleet.start()
    feed = LiveFeed(fleet, config.gateway_keepalive_s, config.max_streams_per_engine, config.live_max_clients)
    metrics = Metrics(fleet, feed)
    history = History(fleet, metrics, config.history_interval_s, config.history_max_age_h)
    history.listeners.append(lambda sample: feed.push("sample", str(sample.epoch), sample))
    events = EventLog(fleet, metrics, config.health_check_timeout_s)
    events.listeners.append(lambda event: feed.push("event", event.id, event))
    await metrics.start()
    await history.start()
    await events.start()
    server = _Server(
        uvicorn.Config(
            build_app(fleet, feed, metrics, config, history, events),
            host=config.gateway_host,
            port=config.gateway_port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            # Bounded: heads must arrive in time and stay small, connections are counted.
            http=head_deadline_protocol(config.gateway_header_timeout_s),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            limit_concurrency=config.live_max_clients + MAX_OTHER_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    log.info(
        "gateway on http://%s:%d (dashboard /, API /engines, live /api/live, metrics /metrics); API key %s",
        config.gateway_host,
        config.gateway_port,
        "required on writes" if config.api_key else "not set",
    )
    sampler = asyncio.create_task(history.run(stop))
    try:
        await _serve_until(server, stop, feed)
    except CannotListen as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await events.stop()
        await history.stop()
        await metrics.stop()
        await fleet.stop()


async def _serve_until(server: _Server, stop: asyncio.Event, feed: LiveFeed) -> None:
    serving = asyncio.create_task(_run(server))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        feed.close()  # open /api/live streams end, so shutdown need not wait for them
        server.should_exit = True
        stopping.cancel()
        await serving


class CannotListen(RuntimeError):
    pass


async def _run(server: _Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when it cannot bind; say which address
        raise CannotListen(
            f"gateway could not listen on {server.config.host}:{server.config.port} (in use? set GATEWAY_PORT)"
        ) from None
