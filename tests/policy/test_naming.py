"""Choosing a new engine's name and port; the provisioner's count of engines still to come; backoff."""

import pytest
from records import NOW, claim, engine

from shared.policy.naming import free_port, free_ports, lowest_free_name, name_number, render_command
from shared.policy.pool import PoolPolicy, engines_to_start, is_pending, start_backoff_s


@pytest.mark.parametrize(
    "taken, expected",
    [
        ([], "acestream-1"),
        (["acestream-1", "acestream-2"], "acestream-3"),
        (["acestream-1", "acestream-3"], "acestream-2"),
        (["acestream-2", "acestream-3"], "acestream-1"),
        (["other", "acestream-x", "acestream-01"], "acestream-2"),
    ],
)
def test_lowest_free_name_fills_the_first_gap(taken, expected):
    assert lowest_free_name(taken) == expected


def test_name_number_reads_only_engine_names():
    assert name_number("acestream-12") == 12
    assert name_number("acestream-") is None
    assert name_number("my-acestream-3") is None


def test_free_port_skips_ports_held_by_engines():
    assert free_port((40000, 40009), []) == 40000
    assert free_port((40000, 40009), [40000, 40001, 40003]) == 40002
    assert list(free_ports((40000, 40003), [40001])) == [40000, 40002, 40003]


def test_free_port_is_none_when_the_range_is_exhausted():
    assert free_port((40000, 40001), [40000, 40001]) is None


def test_free_port_ignores_ports_outside_the_range():
    assert free_port((40000, 40001), [39999, 40002]) == 40000


def test_render_command_fills_the_template():
    assert render_command("x --port {port} --cache-dir {cache_dir}", port=40001, cache_dir="/c") == (
        "x --port 40001 --cache-dir /c"
    )


def test_render_command_names_an_unknown_field():
    with pytest.raises(ValueError, match=r"unknown field 'prot'.*\{port\}"):
        render_command("x --port {prot}", port=1, cache_dir="/c")


POLICY = PoolPolicy(min_replicas=2, min_free_replicas=1, max_replicas=4)


def test_unprobed_engines_count_as_free_ones_to_come():
    fresh = [engine("a", health_status="unknown"), engine("b", health_status="unknown")]
    assert is_pending(fresh[0], NOW)
    assert engines_to_start(fresh, NOW, POLICY) == 0
    assert engines_to_start(fresh, NOW, POLICY, demand=True) == 0


def test_a_claimed_or_busy_unprobed_engine_is_not_pending():
    assert not is_pending(engine("a", health_status="unknown", streams=["s1"]), NOW)
    assert not is_pending(engine("a", health_status="unknown", claim=claim("reap")), NOW)


def test_unregistered_engines_fill_the_floors():
    assert engines_to_start([], NOW, POLICY) == 2
    assert engines_to_start([], NOW, POLICY, unregistered=1) == 1
    assert engines_to_start([], NOW, POLICY, unregistered=2) == 0


def test_demand_adds_one_only_when_nothing_is_free():
    busy = [engine("a", streams=["s1"]), engine("b", streams=["s2"])]
    assert engines_to_start(busy, NOW, POLICY, demand=True) == 1
    assert engines_to_start(busy, NOW, POLICY, unregistered=1, demand=True) == 0


def test_never_beyond_max_counting_unregistered_engines():
    busy = [engine(f"e{i}", streams=[f"s{i}"]) for i in range(3)]
    assert engines_to_start(busy, NOW, POLICY, demand=True) == 1
    assert engines_to_start(busy, NOW, POLICY, unregistered=1, demand=True) == 0
    full = [engine(f"e{i}", streams=[f"s{i}"]) for i in range(4)]
    assert engines_to_start(full, NOW, POLICY, demand=True) == 0


def test_external_engines_neither_count_nor_block():
    external = [engine(f"x{i}", runtime="external") for i in range(5)]
    assert engines_to_start(external, NOW, POLICY) == 2


@pytest.mark.parametrize("failures, expected", [(0, 0), (1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)])
def test_start_backoff_doubles_up_to_a_cap(failures, expected):
    assert start_backoff_s(failures) == expected
