"""Whether a claim still protects what its holder is about to do (pure; no I/O, no clock)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.policy.engines import live_reservations
from shared.schemas import EngineRecord

# A claim this close to lapsing does not cover the step that follows (a docker stop takes seconds).
CLAIM_MARGIN = timedelta(seconds=2)


def claim_covers_removal(record: EngineRecord | None, claim_id: str, now: datetime) -> str | None:
    """None if the engine may be stopped under claim `claim_id`; otherwise why not.

    A stream that started cancels the claim (state-keeper); a claim that lapsed
    (a slow runtime call) lets selection reserve the engine again, and its
    record still names the old, expired claim — so expiry and reservations are
    checked too, not only the claim id.
    """
    if record is None:
        return "its record is gone"
    if record.claim is None or record.claim.claim_id != claim_id:
        return "our claim was cancelled (a stream started on it)"
    if record.streams:
        return "a stream started on it"
    if record.claim.expires_at - now < CLAIM_MARGIN:
        return "our claim lapsed (or is about to) before the removal"
    if live_reservations(record, now):
        return "a selection reserved it after our claim lapsed"
    return None
