"""Which record-less streams on engines are orphans (pure, no I/O)."""

from records import NOW, later

from shared.policy.orphans import orphans_due

GRACE = 30


def test_a_fresh_start_listing_its_stream_before_the_record_lands_is_left_alone():
    seen, due = orphans_due({"e1": ["s1"]}, lambda _s: False, {}, NOW, GRACE)
    assert seen == {("e1", "s1"): NOW} and due == []
    seen, due = orphans_due({"e1": ["s1"]}, lambda _s: False, seen, later(GRACE - 1), GRACE)
    assert due == []


def test_a_stream_record_less_for_the_grace_period_is_due():
    seen, _ = orphans_due({"e1": ["s1", "s2"], "e2": ["s3"]}, lambda s: s == "s2", {}, NOW, GRACE)
    seen, due = orphans_due({"e1": ["s1", "s2"], "e2": ["s3"]}, lambda s: s == "s2", seen, later(GRACE), GRACE)
    assert sorted(due) == [("e1", "s1"), ("e2", "s3")]


def test_a_record_that_lands_clears_the_watch_and_only_record_less_listings_are_remembered():
    seen, _ = orphans_due({"e1": ["s1", "s2"]}, lambda _s: False, {}, NOW, GRACE)
    seen, due = orphans_due({"e1": ["s1", "s2"]}, lambda s: s == "s1", seen, later(GRACE), GRACE)
    assert due == [("e1", "s2")] and set(seen) == {("e1", "s2")}
    # s1 loses its record later (expired, say) and is listed again: its clock starts afresh.
    seen, due = orphans_due({"e1": ["s1"]}, lambda _s: False, seen, later(2 * GRACE), GRACE)
    assert due == [] and seen == {("e1", "s1"): later(2 * GRACE)}
