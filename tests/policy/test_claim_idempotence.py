"""A claim asked for again by its holder is answered with the claim it holds (pure, no I/O).

The first request's write may have been applied although its reply was lost
(a timed-out KV write, DESIGN §9): the retry must not be refused by the caller's own claim.
"""

import pytest
from records import NOW, engine, later

from shared.policy.events import ClaimRefused, apply_claim
from shared.schemas import ClaimRequest


def ask(purpose: str = "clean", holder: str = "janitor-1") -> ClaimRequest:
    return ClaimRequest(container_id="e1", purpose=purpose, holder=holder)


def test_same_holder_and_purpose_reclaiming_gets_the_claim_it_already_holds():
    claimed = apply_claim(engine(), ask(), "c1", NOW, 60)
    again = apply_claim(claimed, ask(), "c2", later(5), 60)
    assert again is claimed  # nothing to write: the existing claim, its id and expiry unchanged
    assert again.claim.claim_id == "c1" and again.state == "cleaning"


@pytest.mark.parametrize("retry", [ask(holder="janitor-2"), ask(purpose="reap")], ids=["other-holder", "other-purpose"])
def test_a_claim_held_for_someone_or_something_else_is_still_refused(retry):
    claimed = apply_claim(engine(), ask(), "c1", NOW, 60)
    with pytest.raises(ClaimRefused) as refused:
        apply_claim(claimed, retry, "c2", NOW, 60)
    assert refused.value.code == 409 and "janitor-1" in str(refused.value)


def test_a_lapsed_claim_is_not_handed_back_but_replaced():
    claimed = apply_claim(engine(), ask(), "c1", NOW, 60)
    again = apply_claim(claimed, ask(), "c2", later(61), 60)
    assert again.claim.claim_id == "c2" and again.claim.expires_at == later(121)
