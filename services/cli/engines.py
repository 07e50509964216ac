"""Stopping the engines `aceorch up` leaves behind when its services stop.

The runtimes start engines so that they outlive a provisioner restart (local
engines in their own sessions, docker engines as containers). `up` owns the
whole machine-local system, so on exit it stops them too, through the
runtime itself: local engines from their state files under ENGINE_STATE_DIR
(pid checked against /proc, so a reused pid is never killed), docker engines
by their labels, only those of this ENGINE_POOL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.config import Config
from shared.runtime import make_runtime


async def stop_engines(config: Config) -> dict[str, BaseException | None]:
    """Stop and remove every live engine of the configured runtime and pool: {name: error or None}."""
    if config.engine_runtime == "local" and not Path(config.engine_state_dir).is_dir():
        return {}  # no engine was ever started with this data dir
    runtime = make_runtime(config)
    try:
        engines = await runtime.list_managed()
        results = await asyncio.gather(*(runtime.remove(engine) for engine in engines), return_exceptions=True)
        await runtime.remove_exited()  # engines that died on their own leave files or containers behind
    finally:
        await runtime.close()
    return {engine.container_name: result for engine, result in zip(engines, results)}
