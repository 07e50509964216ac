"""Facts about one engine record at a moment: load, effective state, tidying.

Reservations and claims carry their own expiry, so they lapse by themselves:
every reader computes with `now` and ignores what has expired, and every
writer drops it (`tidy`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from shared.schemas import EngineRecord, EngineState


def live_reservations(record: EngineRecord, now: datetime) -> dict[str, datetime]:
    return {rid: expires for rid, expires in record.reservations.items() if expires > now}


def load(record: EngineRecord, now: datetime) -> int:
    """Streams plus live reservations: what selection and claims count."""
    # A plain loop, not a dict of the live ones: selection calls this for every engine per request.
    live = 0
    for expires in record.reservations.values():
        if expires > now:
            live += 1
    return len(record.streams) + live


def effective_state(record: EngineRecord, now: datetime) -> EngineState:
    claim = record.claim
    if claim is None or claim.expires_at <= now:
        return "active"
    return "cleaning" if claim.purpose == "clean" else "draining"


def tidy(record: EngineRecord, now: datetime) -> EngineRecord:
    """Drop expired reservations and claims so the stored record says what holds now."""
    reservations = live_reservations(record, now)
    claim = record.claim if effective_state(record, now) != "active" else None
    state = effective_state(record, now)
    if reservations == record.reservations and claim is record.claim and state == record.state:
        return record
    return msgspec.structs.replace(record, reservations=reservations, claim=claim, state=state)


def is_idle(record: EngineRecord, now: datetime) -> bool:
    return not record.streams and not live_reservations(record, now)
