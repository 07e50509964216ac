"""Engines being started on every host, for the scaling lock's next holder (issue 15).

A holder counts engines as records + engines still starting. Its own host's
starts it sees in its runtime (a created engine is listed there at once); a
start on another host it cannot see there. So before a holder releases the
lock it writes what it started to `starting.<host>.<member>` in ace_leases
(acknowledged, per-message TTL), and every holder reads all hosts' entries
under the lock. An engine stays listed from its creation until RECENT_S after
its registration (longer than a registration takes to show in the records),
so there is no moment in which another host counts it neither as a record nor
as a start; the reader leaves out ids it already has a record of, so nothing
is counted twice. The writer renews the entry while it is not empty and
deletes it once empty; a crashed writer's entry expires with its TTL (and one
older than the TTL and MAX_CLOCK_SKEW_S is ignored even where the server keeps
it, DESIGN §9: a fresh entry of a writer whose clock is behind still counts).
Until it expires the other hosts count too many engines, never too few: they
may start one late, never one too many.

A provisioner whose starts keep failing (start backoff) says until when in
its entry, and the others place nothing on its host meanwhile: otherwise its
host, emptier than the rest, would be given every new engine and none would
start anywhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection

import msgspec
from nats.js import api
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_OP

from shared import names
from shared.bus import Bus
from shared.policy.hosts import key_token
from shared.schemas import HostStarts, decoder, encode

log = logging.getLogger("provisioner")

TTL_S = 30.0
RENEW_S = TTL_S / 3
MARKER_TTL_S = 1  # the delete marker of an emptied entry vanishes after this

_decode = decoder(HostStarts)


class StartsBoard:
    def __init__(self, bus: Bus, host_id: str, member: str, max_skew_s: float = 30.0) -> None:
        self.bus = bus
        self.host_id = host_id
        self.max_skew_s = max_skew_s
        self.key = f"{names.STARTS_PREFIX}.{key_token(host_id)}.{key_token(member)}"
        self.listed = False  # whether our entry may be in the bucket (so emptying it needs a delete)
        self.renewed = 0.0  # monotonic time of our last write

    async def publish(self, container_ids: Collection[str], unnamed: int, backoff_until: float | None = None) -> None:
        """Our host's starts as they are now, acknowledged (the lock's next holder must read them)."""
        subject = f"$KV.{names.LEASES_BUCKET}.{self.key}"
        if not container_ids and not unnamed and backoff_until is None:
            if not self.listed:
                return
            headers = {KV_OP: KV_DEL, api.Header.MSG_TTL: f"{MARKER_TTL_S}s"}
            await self.bus.js.publish(subject, b"", headers=headers, timeout=2.0)
            self.listed = False
            return
        entry = HostStarts(
            host_id=self.host_id,
            container_ids=sorted(container_ids),
            unnamed=unnamed,
            written_at=time.time(),
            backoff_until=backoff_until,
        )
        headers = {api.Header.MSG_TTL: f"{math.ceil(TTL_S)}s"}
        await self.bus.js.publish(subject, encode(entry), headers=headers, timeout=2.0)
        self.listed = True
        self.renewed = time.monotonic()

    def due(self) -> bool:
        return self.listed and time.monotonic() - self.renewed >= RENEW_S

    async def elsewhere(self, known: Collection[str]) -> tuple[dict[str, int], set[str]]:
        """(per other host: engines its provisioners are starting that have no record in `known` yet,
        the other hosts whose starts are failing now)."""
        counts: dict[str, int] = {}
        failing: set[str] = set()
        now = time.time()
        oldest = now - TTL_S - self.max_skew_s
        for entry in await _snapshot(self.bus, f"{names.STARTS_PREFIX}.>"):
            try:
                starts = _decode(entry)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring malformed starts entry: %s", exc)
                continue
            if starts.host_id == self.host_id or starts.written_at < oldest:
                continue  # ours: the runtime shows them; a TTL old: its writer is gone
            unseen = sum(1 for c in starts.container_ids if c not in known) + starts.unnamed
            counts[starts.host_id] = counts.get(starts.host_id, 0) + unseen
            if starts.backoff_until is not None and starts.backoff_until > now:
                failing.add(starts.host_id)
        return counts, failing


async def _snapshot(bus: Bus, keys: str) -> list[bytes]:
    """The current values under `keys`, from the stream itself: what was acknowledged is there.

    The stream's own list of subjects, then one get per key. (A watch's snapshot can end before
    entries already on their way to us have been handed over, so it could miss a start.)
    """
    stream = f"KV_{names.LEASES_BUCKET}"
    info = await bus.js.stream_info(stream, subjects_filter=f"$KV.{names.LEASES_BUCKET}.{keys}")
    values: list[bytes] = []
    for subject in sorted((info.state.subjects or {}) if info.state else {}):
        try:
            entry = await bus.leases.get(subject.removeprefix(f"$KV.{names.LEASES_BUCKET}."))
        except (KeyNotFoundError, KeyDeletedError):
            continue  # emptied or expired since the listing
        if entry.value:
            values.append(entry.value)
    return values
