"""What the reference orchestrator's clients are told about capacity and provisioning. Pure.

Proxies written for the reference orchestrator (acexy) poll `GET
/orchestrator/status` and ask `POST /provision/acestream` for an engine when
every engine is full. They need three answers, all decided here from the
records, the pool policy and `now`:

- capacity in stream slots: `MAX_STREAMS_PER_ENGINE` per healthy, active
  engine; a slot is used by a stream or a live reservation;
- whether an engine can be provisioned now, and if not, why and when to ask
  again (`Blocked`): a proxy that is told to wait retries after
  `recovery_eta_seconds` instead of failing its player;
- the ports to report for a provisioned engine, by runtime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shared.policy.engines import effective_state, live_reservations, load
from shared.policy.pool import PoolPolicy, is_outage, managed, unhealthy_for_s
from shared.runtime.base import LABEL_PORT
from shared.schemas import EngineRecord

StatusWord = Literal["healthy", "degraded", "unhealthy"]

# How long a proxy should wait when no provisioner answers: a provisioner that exited is started
# again by Compose, systemd or `aceorch up` within seconds; asking sooner only spins.
NO_PROVISIONER_ETA_S = 10
# After a provisioned engine answered: its first probe (a new engine is probed within about a
# second) and the state-keeper applying it, before the provisioner replies anyway.
HEALTHY_WAIT_S = 5.0
ENGINE_INTERNAL_PORT = (
    6878  # the engine's HTTP port inside its container (shared/runtime/docker.py: not on the host network)
)


@dataclass(frozen=True)
class Capacity:
    total: int  # slots on healthy, active engines
    used: int  # of those, held by streams or live reservations (never more than `total`)
    available: int  # total - used


@dataclass(frozen=True)
class Blocked:
    """Why no engine can be provisioned now, and when asking again makes sense."""

    code: str  # max_replicas_reached, no_provisioner, provisioning_disabled; the gateway adds the provisioner's
    message: str
    recovery_eta_seconds: int  # >= 1 when should_wait; 0 when waiting does not help
    should_wait: bool


PROVISIONING_DISABLED = Blocked(
    code="provisioning_disabled",
    message="ENGINE_RUNTIME=external: engines are registered by address (POST /engines), none is started",
    recovery_eta_seconds=0,
    should_wait=False,
)
NO_PROVISIONER = Blocked(
    code="no_provisioner",
    message="no provisioner is answering; is it running?",
    recovery_eta_seconds=NO_PROVISIONER_ETA_S,
    should_wait=True,
)


def is_serving(record: EngineRecord, now: datetime) -> bool:
    """Healthy and active: an engine selection may hand out (records as readers see them)."""
    return record.health_status == "healthy" and effective_state(record, now) == "active"


def capacity(records: Iterable[EngineRecord], now: datetime, max_streams_per_engine: int) -> Capacity:
    """Stream slots of the serving engines. An engine holding more than its share (a stream
    reported beyond the limit) counts as full, not as negative room."""
    serving = [r for r in records if is_serving(r, now)]
    total = max_streams_per_engine * len(serving)
    used = sum(min(load(r, now), max_streams_per_engine) for r in serving)
    return Capacity(total=total, used=used, available=total - used)


def provisioning_blocked(
    records: Iterable[EngineRecord],
    now: datetime,
    policy: PoolPolicy,
    max_streams_per_engine: int,
    provisioner_alive: bool,
    runtime: str,
    sweep_interval_s: float,
) -> Blocked | None:
    """None while an engine can be provisioned: a provisioner runs and the pool is below MAX_REPLICAS.

    `runtime` is ENGINE_RUNTIME: with `external` nothing is ever provisioned, so
    waiting does not help. The pool counts managed engines only (external ones are
    selected, never created), as the provisioner's own ceiling does.
    """
    records = list(records)
    if runtime == "external":
        return PROVISIONING_DISABLED
    if not provisioner_alive:
        return NO_PROVISIONER
    pool = len(managed(records))
    if pool >= policy.max_replicas:
        eta = max_replicas_eta_s(records, now, policy, max_streams_per_engine, sweep_interval_s)
        return Blocked(
            code="max_replicas_reached",
            message=f"the pool holds {pool} engines, MAX_REPLICAS is {policy.max_replicas}",
            recovery_eta_seconds=eta,
            should_wait=True,
        )
    return None


def max_replicas_eta_s(
    records: Iterable[EngineRecord],
    now: datetime,
    policy: PoolPolicy,
    max_streams_per_engine: int,
    sweep_interval_s: float,
) -> int:
    """Seconds until a stream can be placed although the pool is at its ceiling, at least 1.

    Soonest of: a free slot now (1: use it), a reservation that lapses unused
    (its slot frees), an unhealthy engine falling due for replacement (the
    provisioner's next sweep after that makes room). Otherwise streams must
    end first, which nobody can predict: the next sweep, when the pool is
    looked at again.
    """
    records = list(records)
    if capacity(records, now, max_streams_per_engine).available > 0:
        return 1
    waits = [
        (expires - now).total_seconds()
        for r in records
        if is_serving(r, now)
        for expires in live_reservations(r, now).values()
    ]
    replaceable = [r for r in managed(records) if r.health_status == "unhealthy" and not r.streams]
    if replaceable and not is_outage(records):  # in an outage nothing is replaced (shared.policy.pool)
        soonest = min(policy.unhealthy_replace_after_s - unhealthy_for_s(r, now) for r in replaceable)
        waits.append(max(soonest, 0.0) + sweep_interval_s)
    return max(1, math.ceil(min(waits, default=sweep_interval_s)))


def status_word(nats_connected: bool, capacity_now: Capacity, blocked: Blocked | None) -> StatusWord:
    """`unhealthy` without NATS (nothing can be served), `degraded` while a new stream would find
    neither a free slot nor an engine to provision, else `healthy`."""
    if not nats_connected:
        return "unhealthy"
    if capacity_now.available == 0 and blocked is not None:
        return "degraded"
    return "healthy"


def engine_ports(port: int, labels: dict[str, str], runtime: str, docker_network: str) -> tuple[int, int]:
    """(host port, container port) of a provisioned engine, as the reference reports them.

    `port` is the port the orchestrator reaches the engine at. Local engines and
    docker engines on the host network listen on it directly. Other docker engines
    listen on 6878 inside and are published on the host at the `aceorch.port`
    label's port (which is `port` itself on the default bridge).
    """
    if runtime == "local" or (runtime == "docker" and docker_network == "host"):
        return port, port
    published = labels.get(LABEL_PORT, "")
    return (int(published) if published.isdigit() else port), ENGINE_INTERNAL_PORT


def provision_budget_s(engine_start_timeout_s: float) -> float:
    """The longest one `engine.provision` takes: waiting for the scaling lock (at most
    ENGINE_START_TIMEOUT_S), starting the engine (ENGINE_START_TIMEOUT_S), then healthy."""
    return 2 * engine_start_timeout_s + HEALTHY_WAIT_S
