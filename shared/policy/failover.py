"""When a proxied stream leaves its engine (DESIGN §10), as pure functions of what the proxy saw.

The proxy's channel gathers an `UpstreamView` (times on its monotonic clock,
the engine's record from the ace_engines view, the last stat) and asks
`failover_reason`; a reason means: end this stream with `failover`, select
another engine (excluding the ones left), open a new session, keep the
viewers' connections. `starving_since` carries the starvation clock from one
stat to the next; `may_fail_over` bounds the attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.policy.engines import effective_state
from shared.schemas import EngineRecord, PlaybackStats


@dataclass(frozen=True)
class FailoverPolicy:
    stall_timeout_s: float = 10.0  # no byte for this long on a session that already sent some
    first_byte_timeout_s: float = 30.0  # a new session's prebuffering may take this long
    starvation_s: float = 30.0  # 0 peers and 0 speed for this long
    attempts: int = 3  # failovers per channel before the viewers get a clean end


@dataclass(frozen=True)
class UpstreamView:
    now: float  # monotonic seconds
    opened_at: float  # when the session's playback was opened
    last_byte_at: float | None  # None: no byte yet from this session
    engine: EngineRecord | None  # the engine's record as the KV view has it; None: gone from the bucket
    wall_now: datetime  # for claims, which expire by wall-clock time
    upstream_closed: str | None = None  # why playback ended (error or EOF), None while it runs
    session_gone: bool = False  # the stat URL said "unknown playback session id"
    starving_since: float | None = None  # from `starving_since`


def starving(stats: PlaybackStats) -> bool:
    """0 peers and no download: the swarm has nothing for this session. Unknown figures are not starvation."""
    return stats.peers == 0 and stats.speed_down == 0


def starving_since(previous: float | None, stats: PlaybackStats, now: float) -> float | None:
    """The starvation clock after a stat read at `now`: kept while starving, started anew, or stopped."""
    if not starving(stats):
        return None
    return previous if previous is not None else now


def failover_reason(view: UpstreamView, policy: FailoverPolicy) -> str | None:
    """Why this session must be left now, or None to stay. The first matching reason wins,
    in order of certainty: what the engine said, then what its record says, then silence."""
    if view.session_gone:
        return "session_gone"
    if view.upstream_closed is not None:
        return f"upstream {view.upstream_closed}"
    if view.engine is None:
        return "engine_gone"
    if view.engine.health_status == "unhealthy":
        return "engine_unhealthy"
    if effective_state(view.engine, view.wall_now) != "active":
        return "engine_claimed"
    if view.last_byte_at is None:
        if view.now - view.opened_at >= policy.first_byte_timeout_s:
            return "no_first_byte"
    elif view.now - view.last_byte_at >= policy.stall_timeout_s:
        return "stall"
    if view.starving_since is not None and view.now - view.starving_since >= policy.starvation_s:
        return "starved"
    return None


def may_fail_over(failovers_done: int, policy: FailoverPolicy) -> bool:
    """Whether one more failover is allowed after `failovers_done` of them on this channel."""
    return failovers_done < policy.attempts
