"""Which managed containers `remove_exited` removes, judged on their inspected status (pure, no I/O).

The SDK lists containers filtered on status, then inspects each: an engine listed while
`created` can be running by its inspect. Removing it then stopped a live engine (the
provisioner-pool test lost one in three runs).
"""

import pytest

from shared.runtime.docker import left_behind

NOW = 1_000_000.0
ABANDONED_AFTER_S = 30.0


@pytest.mark.parametrize("status", ["running", "restarting", "paused"])
def test_a_live_container_is_never_left_behind_whatever_the_listing_said(status):
    assert not left_behind(status, NOW - 3600, NOW, ABANDONED_AFTER_S)


@pytest.mark.parametrize("status", ["exited", "dead"])
def test_an_exited_or_dead_container_is_left_behind(status):
    assert left_behind(status, NOW - 1, NOW, ABANDONED_AFTER_S)


def test_a_created_container_is_left_behind_only_once_abandoned():
    assert not left_behind("created", NOW - 5, NOW, ABANDONED_AFTER_S)  # a create in progress
    assert left_behind("created", NOW - 31, NOW, ABANDONED_AFTER_S)
    assert left_behind("created", None, NOW, ABANDONED_AFTER_S)  # no creation time: nothing says it is young
