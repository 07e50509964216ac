"""What a refused claim or release tells its caller, and what a granted claim records (pure, no I/O).

The janitor and reaper log these messages and the endpoint sends the code as the reply's
error code: both are part of the contract (DESIGN §3, `409` busy).
"""

import pytest
from records import NOW, engine, later

from shared.policy.events import ClaimRefused, apply_claim, apply_release
from shared.schemas import ClaimRequest


def ask(purpose: str = "clean", holder: str = "janitor-1", container_id: str = "e1") -> ClaimRequest:
    return ClaimRequest(container_id=container_id, purpose=purpose, holder=holder)


def refusal(call) -> ClaimRefused:
    with pytest.raises(ClaimRefused) as refused:
        call()
    return refused.value


def test_a_granted_claim_records_its_id_purpose_holder_and_expiry():
    claimed = apply_claim(engine(), ask(purpose="reap", holder="reaper-7"), "c1", NOW, 60)
    assert (claimed.claim.claim_id, claimed.claim.purpose, claimed.claim.holder) == ("c1", "reap", "reaper-7")
    assert claimed.claim.expires_at == later(60) and claimed.state == "draining"


def test_an_external_engine_is_never_claimed_and_says_why():
    refused = refusal(lambda: apply_claim(engine(runtime="external"), ask(), "c1", NOW, 60))
    assert (str(refused), refused.code) == ("engine e1 is external: it is never cleaned or removed", 409)


def test_a_claim_held_by_another_names_its_purpose_and_holder():
    claimed = apply_claim(engine(), ask(holder="janitor-1"), "c1", NOW, 60)
    refused = refusal(lambda: apply_claim(claimed, ask(purpose="reap", holder="reaper-2"), "c2", NOW, 60))
    assert (str(refused), refused.code) == ("engine e1 is busy: claimed for clean by janitor-1", 409)


def test_an_engine_in_use_is_refused_with_its_load():
    busy = engine(streams=["s1", "s2"])
    refused = refusal(lambda: apply_claim(busy, ask(), "c1", NOW, 60))
    assert (str(refused), refused.code) == ("engine e1 is busy: 2 streams or reservations", 409)


def test_releasing_someone_elses_claim_is_refused_naming_the_holder():
    claimed = apply_claim(engine(), ask(holder="janitor-1"), "c1", NOW, 60)
    refused = refusal(lambda: apply_release(claimed, "c9", NOW))
    assert (str(refused), refused.code) == ("engine e1 is claimed by janitor-1, not by claim c9", 409)


def test_releasing_the_claim_makes_the_engine_active_again():
    claimed = apply_claim(engine(), ask(), "c1", NOW, 60)
    released = apply_release(claimed, "c1", NOW)
    assert released.claim is None and released.state == "active"
