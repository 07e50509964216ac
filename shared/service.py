"""The shell every service shares: config, logging, signals, connection, metrics, exit code.

A service supplies `body(config, bus, stop)`; it returns when `stop` is set.
SIGTERM/SIGINT set `stop`; the connection is then drained and closed (exit 0).
A connection closed for good sets `stop` too, and the process exits 1 so that
`aceorch up`, Compose or systemd start it again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from shared.bus import Bus, BusError, connect
from shared.config import Config, ConfigError, load_config
from shared.errors import describe

Body = Callable[[Config, Bus, asyncio.Event], Awaitable[None]]
T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOST_GRACE_S = 10.0  # how long a service may take to stop once its connection closed for good


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def run(name: str, body: Body) -> int:
    """Run a service to completion; the return value is the process exit code."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"{name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        return run_loop(_main(name, config, body))
    except KeyboardInterrupt:
        return 0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop: the services spend most of their time in event-loop and
    socket machinery, and uvloop cut a selection's and an event's CPU by ~17% (BENCHMARKS.md).
    The benchmarks' baselines run on it too, so ratios compare like with like."""
    return uvloop.run(main)


async def _main(name: str, config: Config, body: Body) -> int:
    log = logging.getLogger(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bus = await connect(config, name)
    except BusError as exc:
        log.error("%s", exc)
        return 1
    if config.metrics_port:
        from shared.metrics import serve_metrics

        serve_metrics(config.metrics_host, config.metrics_port)
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
    try:
        await _run_body(body(config, bus, stop), bus, stop, log)
    except BusError as exc:  # e.g. a role key whose service finds the layout incomplete
        log.error("%s", exc)
        return 1
    finally:
        await bus.close()
    if bus.lost.is_set():
        log.error("exiting with status 1: its NATS connection is closed for good (%s); restart it", bus.lost_reason)
        return 1
    log.info("%s stopped", name)
    return 0


async def _run_body(
    body: Awaitable[None], bus: Bus, stop: asyncio.Event, log: logging.Logger, grace_s: float = LOST_GRACE_S
) -> None:
    """Await the body; once the connection is closed for good, set `stop` and give the body
    `grace_s` to return before cancelling it: a loop blocked on a dead connection must not keep a
    useless process alive. What the body raises then is a consequence, logged, not re-raised."""
    task = asyncio.ensure_future(body)
    lost = asyncio.ensure_future(bus.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            stop.set()
            if not (await asyncio.wait({task}, timeout=grace_s))[0]:
                log.warning("still running %.0f s after losing NATS; cancelling", grace_s)
                task.cancel()
        if not bus.lost.is_set():
            return await task
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.warning("stopped after losing NATS: %s", describe(exc))
    finally:
        lost.cancel()
        task.cancel()  # only when we are cancelled ourselves: the body goes with us
