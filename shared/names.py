"""Every subject, stream, bucket and consumer name in one place (DESIGN §2–4)."""

from typing import Final

# Events captured by the ACE_EVENTS stream.
STREAM_STARTED: Final = "stream.started"
STREAM_ENDED: Final = "stream.ended"
ENGINE_HEALTH: Final = "engine.health"
ENGINE_REGISTERED: Final = "engine.registered"
ENGINE_REMOVED: Final = "engine.removed"
ENGINE_CLEANED: Final = "engine.cleaned"
EVENT_SUBJECTS: Final = (
    STREAM_STARTED,
    STREAM_ENDED,
    ENGINE_HEALTH,
    ENGINE_REGISTERED,
    ENGINE_REMOVED,
    ENGINE_CLEANED,
)

# Derived notifications (core NATS, not in the stream).
ENGINE_IDLE: Final = "engine.idle"
ENGINE_DEMAND: Final = "engine.demand"
STREAM_STATS: Final = "stream.stats"  # latest playback figures of a started stream (proxies → state-keeper)

# Membership groups (heartbeats in ace_leases, see shared/membership.py).
PROXY_GROUP: Final = "proxy"
PROVISIONER_GROUP: Final = "provisioner"  # which hosts have a live provisioner (placement, shared/policy/hosts.py)
STARTS_PREFIX: Final = "starting"  # ace_leases keys `starting.<host>.<member>`: engines a provisioner is starting

# Request/reply endpoints of the `state-keeper` micro service.
ENGINE_SELECT: Final = "engine.select"
ENGINE_LIST: Final = "engine.list"
ENGINE_GET: Final = "engine.get"
ENGINE_CLAIM: Final = "engine.claim"
ENGINE_RELEASE: Final = "engine.release"
STREAM_LIST: Final = "stream.list"

SERVICE_NAME: Final = "state-keeper"

# The `provisioner` micro service: one engine now, for proxies that ask (the reference's
# POST /provision/acestream); answered once the engine is registered and healthy.
ENGINE_PROVISION: Final = "engine.provision"
# One host's provisioners, `engine.provision.host.<host>` (issue 15): the provisioner that takes an
# `engine.provision` passes it on here when the fleet-wide placement picks another host. Between
# provisioners only, so not in the contract.
ENGINE_PROVISION_HOST: Final = "engine.provision.host"
PROVISIONER_SERVICE: Final = "provisioner"
EVENTS_STREAM: Final = "ACE_EVENTS"
EVENTS_CONSUMER: Final = "state-keeper"
# The gateway's fleet history: one sample per HISTORY_INTERVAL_S, kept HISTORY_MAX_AGE_H.
HISTORY_STREAM: Final = "ACE_HISTORY"
HISTORY_SAMPLE: Final = "history.sample"

ENGINES_BUCKET: Final = "ace_engines"
STREAMS_BUCKET: Final = "ace_streams"
# Leases, per-epoch sweep markers and replica membership; values carry a per-message TTL.
LEASES_BUCKET: Final = "ace_leases"
