"""A short KV lease: one holder at a time across replicas, released on exit, expiring on a crash.

The key lives in `ace_leases` with a per-message TTL. `create` succeeds for
exactly one contender; the holder deletes it with compare-and-set on its own
revision, so a holder whose lease already expired can never delete a
successor's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.errors import describe

log = logging.getLogger(__name__)

RETRY_S = 0.1


class KvLock:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl_s: float) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self._keep = False

    def keep(self) -> None:
        """Leave the lock held until its TTL ends instead of releasing it (what we did may not be visible)."""
        self._keep = True

    @asynccontextmanager
    async def hold(self, wait_s: float) -> AsyncIterator[bool]:
        """Yields True while held, False if another holder kept it for `wait_s`."""
        self._keep = False
        revision = await self._acquire(wait_s)
        try:
            yield revision is not None
        finally:
            if revision is not None and not self._keep:
                await self._release(revision)

    async def _acquire(self, wait_s: float) -> int | None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self.kv.create(self.key, self.holder.encode(), msg_ttl=self.ttl_s)
            except KeyWrongLastSequenceError:
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(RETRY_S)

    async def _release(self, revision: int) -> None:
        try:
            await self.kv.delete(self.key, last=revision)
        except APIError as exc:  # expired meanwhile (maybe taken by another): it is not ours to delete
            log.info("lock %s expired before release (%s)", self.key, exc.description)
        except (TimeoutError, nats.errors.Error) as exc:  # its TTL frees it
            why = describe(exc)
            log.warning("lock %s not released (%s); it expires in %.0fs", self.key, why, self.ttl_s)
