"""Engines across hosts: where a new engine goes, and which host's floor a removal would break.

Decisions are fleet-wide and pure; the agents of each host act on them only for
their own host's engines. A managed engine's host is its record's `host_id`;
records without one (registered before hosts were recorded) count towards a
host of their own, `UNKNOWN_HOST`, that never receives new engines.

Placement: the next engine goes to the live host with the most room under
`HOST_MAX_ENGINES` (0: no per-host cap, so room is minus the engines it runs).
Ties go to the host carrying fewer started streams, so losing one host costs
as few streams as possible, then to the smaller host id (every replica decides
the same). Hosts at their cap, and hosts whose agents nobody hears, get none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from shared.schemas import EngineRecord

UNKNOWN_HOST = ""


@dataclass(frozen=True)
class HostLoad:
    host_id: str
    engines: int
    streams: int


def key_token(host_id: str) -> str:
    """A host id as one KV key token (`epoch.reaper-sweep.<host>`): host ids may hold dots, which split keys."""
    return re.sub(r"[^-_=a-zA-Z0-9]", "_", host_id) or "_"


def host_of(record: EngineRecord) -> str:
    return record.host_id or UNKNOWN_HOST


def loads(
    records: Iterable[EngineRecord], hosts: Collection[str] = (), starting: Mapping[str, int] | None = None
) -> dict[str, HostLoad]:
    """Per host: engines recorded there (plus `starting` ones without a record yet) and the streams they
    carry; `hosts` are listed even when empty."""
    engines: Counter[str] = Counter({h: 0 for h in hosts})
    engines.update(starting or {})
    streams: Counter[str] = Counter({h: 0 for h in hosts})
    for record in records:
        engines[host_of(record)] += 1
        streams[host_of(record)] += len(record.streams)
    return {h: HostLoad(h, engines[h], streams[h]) for h in engines}


def room(load: HostLoad, host_max: int) -> int | None:
    """Engines the host can still take; None: no cap."""
    return None if host_max <= 0 else max(0, host_max - load.engines)


def place(
    records: Iterable[EngineRecord],
    live_hosts: Collection[str],
    count: int,
    host_max: int = 0,
    starting: Mapping[str, int] | None = None,
) -> list[str]:
    """The host of each of `count` new engines, in order; shorter when the live hosts are full.

    `starting`: per host, engines created there that have no record yet; they take room like any other.
    """
    current = loads(records, live_hosts, starting)
    placed: list[str] = []
    for _ in range(max(0, count)):
        candidates = [current[h] for h in sorted(live_hosts) if h != UNKNOWN_HOST and room(current[h], host_max) != 0]
        if not candidates:
            break
        best = min(candidates, key=lambda load: (load.engines, load.streams, load.host_id))
        placed.append(best.host_id)
        current[best.host_id] = HostLoad(best.host_id, best.engines + 1, best.streams)
    return placed


def keeps_host_floor(records: Iterable[EngineRecord], victim: EngineRecord, min_per_host: int) -> bool:
    """Would the victim's host still run `min_per_host` engines without it? (0: no per-host floor.)"""
    if min_per_host <= 0:
        return True
    host = host_of(victim)
    others = sum(1 for r in records if host_of(r) == host and r.container_id != victim.container_id)
    return others >= min_per_host


def host_floor_deficit(records: Iterable[EngineRecord], live_hosts: Collection[str], min_per_host: int) -> int:
    """Engines missing from live hosts below `min_per_host` (placement fills the emptiest host first)."""
    if min_per_host <= 0:
        return 0
    current = loads(records, live_hosts)
    return sum(max(0, min_per_host - current[h].engines) for h in live_hosts if h != UNKNOWN_HOST)
