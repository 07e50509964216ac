"""Why a reap claim no longer covers the removal, word for word, and the margin's exact edge.

Complements test_claims.py (which matches the reasons loosely) with what the reaper logs and
the boundary of CLAIM_MARGIN (found by `make mutate`).
"""

from datetime import timedelta

import pytest
from records import NOW, claim, engine, later

from shared.policy.claims import CLAIM_MARGIN, claim_covers_removal
from shared.schemas import Claim


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (None, "its record is gone"),
        (engine(), "our claim was cancelled (a stream started on it)"),
        (
            engine(claim=Claim(claim_id="c2", purpose="reap", holder="x", expires_at=later(30))),
            "our claim was cancelled (a stream started on it)",
        ),
        (engine(claim=claim("reap", expires_in=30), streams=["s1"]), "a stream started on it"),
        (engine(claim=claim("reap", expires_in=1)), "our claim lapsed (or is about to) before the removal"),
        (
            engine(claim=claim("reap", expires_in=30), reservations={"r1": later(20)}),
            "a selection reserved it after our claim lapsed",
        ),
    ],
    ids=["gone", "no-claim", "other-claim", "stream", "lapsing", "reserved"],
)
def test_the_reason_the_engine_is_kept_is_said_in_full(record, why):
    assert claim_covers_removal(record, "c1", NOW) == why


def test_a_claim_with_exactly_the_margin_left_still_covers_the_removal_and_one_with_less_does_not():
    exactly = engine(claim=claim("reap", expires_in=CLAIM_MARGIN.total_seconds()))
    assert claim_covers_removal(exactly, "c1", NOW) is None
    short = engine(claim=claim("reap", expires_in=(CLAIM_MARGIN - timedelta(milliseconds=1)).total_seconds()))
    assert claim_covers_removal(short, "c1", NOW) == "our claim lapsed (or is about to) before the removal"
