"""What the gateway needs to do its job, and which of it is missing right now (`GET /readyz`).

`/healthz` says whether this process is up and has NATS; it said 200 while no
state-keeper answered, so every selection failed after 5 s behind a green
health check. Readiness asks the parts a request depends on: NATS, and at
least one state-keeper (a `$SRV.PING` answered by any replica).
"""

from __future__ import annotations

import asyncio
import time

import nats.errors

from services.gateway.bodies import Missing
from shared import names
from shared.bus import Bus

PING_TIMEOUT_S = 1.0
CACHE_S = 1.0  # probes closer together than this share one answer: a readiness flood is not a NATS flood


class Readiness:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._missing: list[Missing] = []
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def missing(self) -> list[Missing]:
        """Names of what is missing (`nats`, `state-keeper`); empty when ready."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= CACHE_S:
                self._missing = await self._check()
                self._checked_at = time.monotonic()
            return list(self._missing)

    async def _check(self) -> list[Missing]:
        nc = self.bus.nc
        if not nc.is_connected:
            return ["nats", "state-keeper"]  # nothing behind NATS can answer either
        return [] if await answers_ping(self.bus, names.SERVICE_NAME) else ["state-keeper"]


class Presence:
    """Whether any replica of the micro service `service` answers `$SRV.PING` (asked at most once per CACHE_S)."""

    def __init__(self, bus: Bus, service: str) -> None:
        self.bus = bus
        self.service = service
        self._alive = False
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def alive(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked_at >= CACHE_S:
                self._alive = await answers_ping(self.bus, self.service)
                self._checked_at = time.monotonic()
            return self._alive


async def answers_ping(bus: Bus, service: str) -> bool:
    """One `$SRV.PING.<service>`: True if any replica answered within PING_TIMEOUT_S."""
    if not bus.nc.is_connected:
        return False
    try:
        await bus.nc.request(f"$SRV.PING.{service}", b"", timeout=PING_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error, OSError):
        return False
    return True
