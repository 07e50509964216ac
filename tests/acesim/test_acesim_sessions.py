"""Session bookkeeping, in process (no sockets): idle drop and cache growth."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deploy.acesim import acesim


def make_engine(cache_dir: Path) -> acesim.Engine:
    sim = acesim.Simulator("127.0.0.1", [6878], str(cache_dir), single=True)
    return sim.engines[6878]


def test_tick_grows_the_cache_and_recreates_a_deleted_dir(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "cache")
    session, _key = engine.open_session("ab" * 20)
    engine.tick(session.last_seen + 1)
    assert engine.cache_bytes() == acesim.CACHE_BYTES_PER_TICK

    (tmp_path / "cache" / f"{'ab' * 20}.dat").unlink()
    (tmp_path / "cache").rmdir()
    engine.tick(session.last_seen + 2)
    assert engine.cache_bytes() == acesim.CACHE_BYTES_PER_TICK
    assert session.bytes == 2 * acesim.CACHE_BYTES_PER_TICK


def test_abandoned_session_is_dropped_after_the_idle_timeout(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    session, key = engine.open_session("cd" * 20)
    engine.tick(session.last_seen + acesim.SESSION_IDLE_TIMEOUT_S - 1)
    assert engine.find_session(session.infohash, key) is session

    engine.tick(session.last_seen + acesim.SESSION_IDLE_TIMEOUT_S + 1)
    assert engine.find_session(session.infohash, key) is None
    assert session.ended


def test_a_session_with_a_player_is_never_idle(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    session, key = engine.open_session("ef" * 20)
    session.players = 1
    engine.tick(session.last_seen + 10 * acesim.SESSION_IDLE_TIMEOUT_S)
    assert engine.find_session(session.infohash, key) is session


def test_keys_of_one_content_share_a_session(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    first, key1 = engine.open_session("01" * 20)
    second, key2 = engine.open_session("01" * 20)
    assert first is second and key1 != key2
    assert engine.find_session("02" * 20, key1) is None  # key must match its content


def test_port_ranges() -> None:
    assert acesim.parse_port_range("20000-20002") == [20000, 20001, 20002]
    assert acesim.parse_port_range("6878") == [6878]
    for bad in ("2-1", "a-b", "0-5", "65535-65536"):
        with pytest.raises(argparse.ArgumentTypeError):
            acesim.parse_port_range(bad)
