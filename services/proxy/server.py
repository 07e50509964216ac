"""The proxy's body: engines view, membership, channels, and the viewer HTTP server until `stop`."""

from __future__ import annotations

import asyncio
import logging

import httpx

from services.proxy.channel import Hub
from services.proxy.hls import Hls
from services.proxy.http import ProxyApp, ViewerProtocol
from services.proxy.upstream import Upstream
from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.keeper_client import KeeperClient
from shared.kv import KvView
from shared.membership import Membership, new_member_id
from shared.schemas import EngineRecord, decode_engine

log = logging.getLogger("proxy")

SHUTDOWN_S = 5.0  # to stop every engine session and publish their stream.ended
MAX_ENGINE_CONNECTIONS = 1000


def engine_client() -> httpx.AsyncClient:
    """Engines are reached directly (no proxy variables); playbacks hold a connection each."""
    limits = httpx.Limits(max_connections=MAX_ENGINE_CONNECTIONS, max_keepalive_connections=20)
    return httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    member_id = new_member_id("proxy-")
    membership = Membership(bus, names.PROXY_GROUP, member_id, config.stat_interval_s)
    engines: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
    async with engine_client() as http:
        upstream = Upstream(bus.nc, KeeperClient(bus.nc, bus.js), http, engines, bus.streams, member_id)
        hub = Hub(config, upstream)
        hls = Hls(config, upstream)
        app = ProxyApp(hub, hls, config)
        await engines.start()
        await membership.start()
        loop = asyncio.get_running_loop()
        try:
            # SO_REUSEPORT: replicas on one host (Compose's --scale with host networking) share PROXY_PORT and
            # the kernel spreads viewer connections over them; each replica keeps its own channels.
            server = await loop.create_server(
                lambda: ViewerProtocol(app), config.proxy_host, config.proxy_port, backlog=1024, reuse_port=True
            )
        except OSError as exc:
            await membership.stop()
            await engines.stop()
            log.error(
                "proxy could not listen on %s:%d: %s (in use? set PROXY_PORT)",
                config.proxy_host,
                config.proxy_port,
                exc.strerror,
            )
            raise SystemExit(1) from None
        log.info(
            "proxy %s on http://%s:%d (GET /ace/getstream?id=..., /ace/manifest.m3u8?id=..., /ace/status, "
            "/metrics); %d replica(s)",
            member_id,
            config.proxy_host,
            config.proxy_port,
            len(membership.members),
        )
        # The heartbeat outlives `stop` until this replica's streams are ended: a state-keeper that saw it
        # leave first would end them itself, as `proxy_lost`, while they were still being ended here.
        streams_ended = asyncio.Event()
        heartbeat = loop.create_task(membership.run(streams_ended))
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait([heartbeat, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            server.close()
            await asyncio.gather(hub.close(SHUTDOWN_S), hls.close(SHUTDOWN_S))
            for task in list(app.tasks):
                task.cancel()
            await asyncio.gather(*app.tasks, return_exceptions=True)
            streams_ended.set()
            try:
                await heartbeat  # says goodbye; raises what ended it early, if anything did
            finally:
                await membership.stop()
                await engines.stop()
