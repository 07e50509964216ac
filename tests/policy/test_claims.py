"""When a reap claim still covers stopping the engine: a lapsed claim does not (issue 21 item 10)."""

import pytest
from records import NOW, claim, engine, later

from shared.policy.claims import claim_covers_removal
from shared.schemas import Claim


def test_a_live_claim_of_ours_on_an_idle_engine_covers_the_removal():
    assert claim_covers_removal(engine(claim=claim("reap", expires_in=30)), "c1", NOW) is None


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (None, "its record is gone"),
        (engine(), "our claim was cancelled"),
        (
            engine(claim=Claim(claim_id="c2", purpose="reap", holder="x", expires_at=later(30))),
            "our claim was cancelled",
        ),
        (engine(claim=claim("reap", expires_in=30), streams=["s1"]), "a stream started on it"),
        # The record still names our claim after it lapsed: only its expiry tells.
        (engine(claim=claim("reap", expires_in=-1)), "our claim lapsed"),
        (engine(claim=claim("reap", expires_in=1)), "our claim lapsed (or is about to)"),
        (engine(claim=claim("reap", expires_in=30), reservations={"r1": later(20)}), "a selection reserved it"),
    ],
)
def test_anything_else_keeps_the_engine(record, why):
    assert why in claim_covers_removal(record, "c1", NOW)


def test_an_expired_reservation_does_not_keep_it():
    record = engine(claim=claim("reap", expires_in=30), reservations={"r1": later(-5)})
    assert claim_covers_removal(record, "c1", NOW) is None
