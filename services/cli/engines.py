"""Stopping the engines `aceorch up` leaves behind when its services stop.

The runtimes start engines so that they outlive a provisioner restart (local
engines in their own sessions, docker engines as containers). `up` owns the
whole machine-local system, so on exit it stops them too, through the
runtime itself: local engines from their state files under ENGINE_STATE_DIR
(pid checked against /proc, so a reused pid is never killed), docker engines
by their labels, only those of this ENGINE_POOL. Each engine stopped is then
reported `engine.removed`, so the records never outlive the engines: a quick
restart would otherwise show (and hand out) the last run's engines as healthy
until their last verdict went stale.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.cli.proxy import publish_event
from shared import auth, names
from shared.config import Config
from shared.runtime import make_runtime
from shared.runtime.base import EngineSpec
from shared.schemas import EngineRemoved

REMOVAL_REASON = "stopped by aceorch up"
RECORDED_WITHIN_S = 5.0  # how long the state-keeper gets to delete the records before `up` goes on


async def stop_engines(config: Config) -> list[tuple[EngineSpec, BaseException | None]]:
    """Stop and remove every live engine of the configured runtime and pool: [(engine, error or None)]."""
    if config.engine_runtime == "local" and not Path(config.engine_state_dir).is_dir():  # noqa: ASYNC240  # one local stat
        return []  # no engine was ever started with this data dir
    runtime = make_runtime(config)
    try:
        engines = await runtime.list_managed()
        results = await asyncio.gather(*(runtime.remove(engine) for engine in engines), return_exceptions=True)
        await runtime.remove_exited()  # engines that died on their own leave files or containers behind
    finally:
        await runtime.close()
    return list(zip(engines, results, strict=True))


async def report_removed(nats_url: str, container_ids: list[str], nkey: str = "") -> list[str]:
    """Publish `engine.removed` for each, then wait (bounded) for their records to go: the ids still recorded.

    The events are durable: a state-keeper that is not running applies them when it starts.
    """
    if not container_ids:
        return []
    nc = await nats.connect(
        nats_url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False, **auth.client_options(nkey)
    )
    try:
        for cid in container_ids:
            removed = EngineRemoved(container_id=cid, reason=REMOVAL_REASON)
            await publish_event(nc, names.ENGINE_REMOVED, removed, f"removed-{cid}-{uuid.uuid4().hex[:12]}")
        kv = await nc.jetstream().key_value(names.ENGINES_BUCKET)
        left = list(container_ids)
        deadline = asyncio.get_running_loop().time() + RECORDED_WITHIN_S
        while left and asyncio.get_running_loop().time() < deadline:
            left = [cid for cid in left if await _recorded(kv, cid)]
            if left:
                await asyncio.sleep(0.1)
        return left
    finally:
        await nc.close()


async def _recorded(kv: KeyValue, container_id: str) -> bool:
    try:
        await kv.get(container_id)
    except KeyNotFoundError:  # deleted ones raise its subclass KeyDeletedError
        return False
    return True
