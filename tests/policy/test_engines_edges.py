"""Tidying an engine record: what has lapsed goes, what still holds stays (pure, no I/O).

Complements the selection, pool and event tests, which read records through these helpers,
with the cases they leave open (found by `make mutate`).
"""

from records import NOW, claim, engine, later

from shared.policy.engines import is_idle, live_reservations, load, tidy


def test_a_reservation_lapses_at_its_expiry_instant():
    record = engine(reservations={"r1": NOW, "r2": later(1)})
    assert live_reservations(record, NOW) == {"r2": later(1)}
    assert load(record, NOW) == 1
    assert is_idle(engine(reservations={"r1": NOW}), NOW)


def test_tidying_drops_a_lapsed_reservation_even_when_the_state_stays_the_same():
    record = engine(reservations={"r1": later(-1), "r2": later(5)})
    assert tidy(record, NOW).reservations == {"r2": later(5)}


def test_tidying_keeps_a_live_claim_and_its_state_while_dropping_a_lapsed_reservation():
    cleaning = claim("clean", expires_in=60)
    record = engine(claim=cleaning, state="cleaning", reservations={"r1": later(-1)})
    assert tidy(record, NOW) == engine(claim=cleaning, state="cleaning", reservations={})


def test_tidying_a_lapsed_claim_makes_the_engine_active_again():
    record = engine(claim=claim("reap", expires_in=-1), state="draining", reservations={"r1": later(5)})
    assert tidy(record, NOW) == engine(claim=None, state="active", reservations={"r1": later(5)})


def test_a_record_with_nothing_lapsed_is_left_as_it_is():
    record = engine(claim=claim("clean", expires_in=60), state="cleaning", reservations={"r1": later(5)})
    assert tidy(record, NOW) is record
