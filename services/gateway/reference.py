"""The reference orchestrator's status and provisioning endpoints, for proxies written for it (acexy).

acexy polls `GET /orchestrator/status` (without an API key) and, when every
engine holds its share of streams, asks `POST /provision/acestream` for a new
engine, waits, re-reads `/engines` and plays from the new engine. It reads
`provisioning.can_provision` as "a new stream can get an engine", and a
refusal's `detail.should_wait` / `recovery_eta_seconds` as when to ask again.

Status is computed from the gateway's views and the pool policy
(`shared.policy.provisioning`); whether a provisioner is alive is a
`$SRV.PING.provisioner`. Provisioning is the provisioner's `engine.provision`
request, answered once the engine is registered and healthy.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import msgspec
import nats.errors
from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec

from services.gateway.bodies import strict_body
from services.gateway.errors import AnyRequest
from services.gateway.fleet import Fleet
from services.gateway.ready import Presence
from services.gateway.routes import errors
from shared import names
from shared.config import Config
from shared.kv import wait_for_value
from shared.policy.pool import PoolPolicy
from shared.policy.provisioning import (
    NO_PROVISIONER,
    PROVISIONING_DISABLED,
    Blocked,
    capacity,
    provision_budget_s,
    provisioning_blocked,
    status_word,
)
from shared.schemas import ProvisionError, ProvisionReply, ProvisionRequest, decoder, encode, utcnow

log = logging.getLogger(__name__)

REPLY_SLACK_S = 2.0  # on top of the provisioner's own budget: the reply's way back
VIEW_WAIT_S = 5.0  # until this gateway's view shows the new engine, so the client's next GET /engines does
_decode_reply = decoder(ProvisionReply)
_decode_error = decoder(ProvisionError)


# ---------------------------------------------------------------- bodies (the reference's field names)


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    pass


class BlockedDetails(Struct, frozen=True):
    code: str
    message: str
    recovery_eta_seconds: int
    should_wait: bool


class Provisioning(Struct, frozen=True):
    can_provision: bool
    blocked_reason: str | None
    blocked_reason_details: BlockedDetails | None


class Vpn(Struct, frozen=True):
    connected: bool  # no VPN integration: always false


class Slots(Struct, frozen=True):
    total: int
    used: int
    available: int


class OrchestratorStatus(Struct, frozen=True):
    status: Literal["healthy", "degraded", "unhealthy"]
    vpn: Vpn
    provisioning: Provisioning
    capacity: Slots


class Provisioned(Struct, frozen=True):
    container_id: str
    container_name: str
    host_http_port: int  # where the engine answers on its host (what acexy plays from)
    container_http_port: int  # where it listens inside its container
    container_https_port: int | None  # engines get no HTTPS port: always null


class FailureDetail(Struct, frozen=True):
    code: str
    message: str
    recovery_eta_seconds: int
    should_wait: bool
    can_retry: bool


class ProvisionFailure(Struct, frozen=True):
    detail: FailureDetail


# ---------------------------------------------------------------- routes


def reference_routes(fleet: Fleet, config: Config, mutating: dict[str, Any]) -> list[HTTPRouteHandler]:
    provisioner = Presence(fleet.bus, names.PROVISIONER_SERVICE)
    pool = PoolPolicy.from_config(config)
    slots_per_engine = config.max_streams_per_engine
    budget_s = provision_budget_s(config.engine_start_timeout_s) + REPLY_SLACK_S

    @get("/orchestrator/status", tags=["reference"])
    async def orchestrator_status() -> OrchestratorStatus:
        """The reference's status: stream slots (MAX_STREAMS_PER_ENGINE per healthy, active engine) and
        whether an engine can be provisioned now, else why and when to ask again. No API key needed."""
        now = utcnow()
        records = fleet.engine_list(now)
        blocked = provisioning_blocked(
            records,
            now,
            pool,
            slots_per_engine,
            await provisioner.alive(),
            config.engine_runtime,
            config.autoscale_interval_s,
        )
        slots = capacity(records, now, slots_per_engine)
        return OrchestratorStatus(
            status=status_word(fleet.connected, slots, blocked),
            vpn=Vpn(connected=False),
            provisioning=Provisioning(
                can_provision=blocked is None,
                blocked_reason=blocked.message if blocked else None,
                blocked_reason_details=_details(blocked),
            ),
            capacity=Slots(total=slots.total, used=slots.used, available=slots.available),
        )

    failures = {503: ResponseSpec(data_container=ProvisionFailure, description="No engine now; see Retry-After")}

    @post(
        "/provision/acestream",
        tags=["reference"],
        status_code=200,
        responses={**errors(400, 401, 403, 413, 415, 422), **failures},
        **mutating,
    )
    async def provision(request: AnyRequest, data: ProvisionRequest | None = None) -> Response[Provisioned]:
        """One new engine now, answered once it is registered and healthy (at most about 2 x
        ENGINE_START_TIMEOUT_S). `labels` and `env` are accepted and not applied: engines get the
        pool's settings. No engine: `{"detail": {code, message, recovery_eta_seconds, should_wait,
        can_retry}}` with Retry-After when waiting helps."""
        body = await strict_body(request, ProvisionRequest) or ProvisionRequest()
        if config.engine_runtime == "external":
            return _failure(PROVISIONING_DISABLED)  # type: ignore[return-value]  # the annotation is the 200 body in OpenAPI; failures are in `responses`
        return await _provision(fleet, body, budget_s)

    return [orchestrator_status, provision]


async def _provision(
    fleet: Fleet, body: ProvisionRequest, budget_s: float
) -> Response[Any]:  # Provisioned or a failure
    try:
        msg = await fleet.bus.nc.request(names.ENGINE_PROVISION, encode(body), timeout=budget_s)
    except nats.errors.NoRespondersError:
        return _failure(NO_PROVISIONER)
    except nats.errors.TimeoutError:
        return _failure(Blocked("provision_timeout", f"no engine within {budget_s:g}s", 1, True), status=504)
    except (nats.errors.Error, OSError) as exc:
        return _failure(Blocked("nats_unavailable", f"NATS is unavailable ({type(exc).__name__})", 2, True))
    if (msg.headers or {}).get("Nats-Service-Error-Code"):
        return _refused(msg.data)
    try:
        reply = _decode_reply(msg.data)
    except msgspec.DecodeError as exc:
        log.warning("engine.provision: undecodable reply: %s", exc)
        return _failure(Blocked("bad_reply", "the provisioner sent an undecodable reply", 1, True), status=502)
    if await wait_for_value(fleet.engines, reply.container_id, lambda record: True, VIEW_WAIT_S) is None:
        log.warning("provisioned %s, but this gateway's view does not show it yet", reply.container_name)
    log.info("provisioned %s on %s:%d for a proxy", reply.container_name, reply.host, reply.port)
    return Response(
        Provisioned(
            container_id=reply.container_id,
            container_name=reply.container_name,
            host_http_port=reply.host_port,
            container_http_port=reply.container_port,
            container_https_port=None,
        )
    )


def _refused(data: bytes) -> Response[ProvisionFailure]:
    try:
        error = _decode_error(data)
    except msgspec.DecodeError:
        return _failure(Blocked("bad_reply", "the provisioner sent an undecodable error", 1, True), status=502)
    if error.code != 503:
        return _failure(Blocked(error.reason, error.error, 0, False), status=502)  # our bug: waiting does not help
    eta = max(1, math.ceil(error.retry_after_s or 1))
    return _failure(Blocked(error.reason, error.error, eta, True))


def _details(blocked: Blocked | None) -> BlockedDetails | None:
    if blocked is None:
        return None
    return BlockedDetails(
        code=blocked.code,
        message=blocked.message,
        recovery_eta_seconds=blocked.recovery_eta_seconds,
        should_wait=blocked.should_wait,
    )


def _failure(blocked: Blocked, status: int = 503) -> Response[ProvisionFailure]:
    detail = FailureDetail(
        code=blocked.code,
        message=blocked.message,
        recovery_eta_seconds=blocked.recovery_eta_seconds,
        should_wait=blocked.should_wait,
        can_retry=blocked.should_wait,
    )
    headers = {"Retry-After": str(max(1, blocked.recovery_eta_seconds))} if blocked.should_wait else None
    return Response(ProvisionFailure(detail=detail), status_code=status, headers=headers)
