"""Once-per-interval work across replicas: per-epoch markers in the leases bucket.

Every replica wakes at each interval boundary and tries to `create` the key of
the current epoch; exactly one succeeds and runs the sweep. A crashed winner
costs one interval at most: the next epoch is a fresh race.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue


def epoch_of(timestamp: float, interval_s: float) -> int:
    return math.floor(timestamp / interval_s)


async def claim_epoch(
    leases: KeyValue, job: str, interval_s: float, holder: str, timestamp: float | None = None
) -> bool:
    """True if this replica won `job` for the current interval."""
    epoch = epoch_of(time.time() if timestamp is None else timestamp, interval_s)
    try:
        await leases.create(f"epoch.{job}.{epoch}", holder.encode(), msg_ttl=max(3 * interval_s, 1))
    except KeyWrongLastSequenceError:
        return False
    return True


async def sleep_to_next_epoch(interval_s: float, stop: asyncio.Event, jitter_s: float = 0.05) -> bool:
    """Sleep until just after the next boundary; False if `stop` was set meanwhile."""
    now = time.time()
    delay = (epoch_of(now, interval_s) + 1) * interval_s - now + random.uniform(0, jitter_s)
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return True
    return False
