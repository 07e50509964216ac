"""The `provisioner` micro service: `engine.provision`, one engine now.

Proxies written for the reference orchestrator ask for an engine when every
engine is full (`POST /provision/acestream` on the gateway) and wait for the
answer. Any provisioner replica may take a request (micro's queue group); the
scaling lock orders it with the other replicas' starts, so MAX_REPLICAS holds.
Each request runs in its own task (micro hands a subscription one message at
a time, and a start takes seconds), at most MAX_PENDING at once.

Being a micro service also says the provisioner is alive: the gateway's
`GET /orchestrator/status` pings `$SRV.PING.provisioner`.

Many hosts (issue 15): whichever provisioner takes the request, the engine goes
where the fleet-wide placement puts it (`hosts.place`, the sweep's rule), so a
request that lands on a host at HOST_MAX_ENGINES still gets an engine while
another host has room. A provisioner can only start engines on its own host,
so it passes such a request on to that host's provisioners, which also serve
`engine.provision.host.<host>`, and relays their answer as it is. A request
passed on is started there or refused there, never passed on again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from shared import names
from shared.decode_errors import describe_decode_error
from shared.errors import describe
from shared.policy.hosts import key_token
from shared.policy.provisioning import engine_ports, provision_budget_s
from shared.schemas import ProvisionError, ProvisionRefusal, ProvisionReply, ProvisionRequest, decoder, encode

if TYPE_CHECKING:
    from services.provisioner.provisioner import Provisioner

log = logging.getLogger("provisioner")

VERSION = "0.1.0"
MAX_PENDING = 32  # requests being answered at once; more are refused as busy
MAX_REQUEST_BYTES = 64 * 1024
BUSY_RETRY_S = 1.0  # the lock held too long, or a host's provisioner just gone: ask again soon
_decode_request = decoder(ProvisionRequest)


class Refused(Exception):
    """No engine can be given now: `reason` says why, `retry_after_s` when to ask again."""

    def __init__(self, reason: ProvisionRefusal, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Elsewhere(Exception):
    """The fleet-wide placement puts the engine on another host: `host_id`'s provisioners start it."""

    def __init__(self, host_id: str) -> None:
        super().__init__(f"the engine goes to host {host_id}")
        self.host_id = host_id


def host_subject(host_id: str) -> str:
    """Where one host's provisioners take the requests passed on to them."""
    return f"{names.ENGINE_PROVISION_HOST}.{key_token(host_id)}"


class ProvisionEndpoint:
    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner
        self.service: Service | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.service = await add_service(
            self.provisioner.bus.nc,
            name=names.PROVISIONER_SERVICE,
            version=VERSION,
            description="starts one engine on request (the reference orchestrator's POST /provision/acestream)",
        )
        await self.service.add_endpoint(name="provision", subject=names.ENGINE_PROVISION, handler=self.on_request)
        await self.service.add_endpoint(
            name="provision-here", subject=host_subject(self.provisioner.host_id), handler=self.on_passed_on
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        for task in self.tasks:
            task.cancel()  # their engines keep starting; the next sweep adopts them
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def on_request(self, request: Request) -> None:
        await self.take(request, here_only=False)

    async def on_passed_on(self, request: Request) -> None:
        await self.take(request, here_only=True)

    async def take(self, request: Request, here_only: bool) -> None:
        if len(self.tasks) >= MAX_PENDING:
            await _refuse(request, Refused("busy", f"{MAX_PENDING} provision requests are pending; ask again", 2.0))
            return
        task = asyncio.get_running_loop().create_task(self.answer(request, here_only))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, request: Request, here_only: bool = False) -> None:
        try:
            _decode(request.data)
        except ValueError as exc:
            await _respond_error(request, ProvisionError(error=str(exc), code=400, reason="bad_request"))
            return
        try:
            spec, healthy = await self.provisioner.provision_one(here_only)
        except Elsewhere as elsewhere:
            await self.pass_on(request, elsewhere.host_id)
            return
        except Refused as refused:
            log.info("provision request refused (%s): %s", refused.reason, refused)
            await _refuse(request, refused)
            return
        except Exception:
            log.exception("provision request failed")
            await _respond_error(request, ProvisionError(error="internal error", code=500, reason="internal"))
            return
        config = self.provisioner.config
        host_port, container_port = engine_ports(spec.port, spec.labels, spec.runtime, config.docker_network)
        if not healthy:
            log.info("%s answers but is not healthy in the records yet; handing it out anyway", spec.container_name)
        reply = ProvisionReply(
            container_id=spec.container_id,
            container_name=spec.container_name,
            host=spec.host,
            port=spec.port,
            host_port=host_port,
            container_port=container_port,
            runtime=spec.runtime,
        )
        await request.respond(encode(reply))

    async def pass_on(self, request: Request, host_id: str) -> None:
        """Ask `host_id`'s provisioners for the engine and answer with what they answer."""
        log.info("provision request passed on to host %s (the fleet-wide placement puts the engine there)", host_id)
        budget_s = provision_budget_s(self.provisioner.config.engine_start_timeout_s)
        try:
            reply = await self.provisioner.bus.nc.request(host_subject(host_id), request.data, timeout=budget_s)
        except nats.errors.NoRespondersError:  # its provisioner stopped since its last heartbeat
            refused = Refused("busy", f"host {host_id}'s provisioner is gone; ask again", BUSY_RETRY_S)
            await _refuse(request, refused)
            return
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("provision request passed on to host %s failed: %s", host_id, describe(exc))
            await _respond_error(request, ProvisionError(error="internal error", code=500, reason="internal"))
            return
        await request.respond(reply.data, headers=reply.headers)


def _decode(data: bytes) -> ProvisionRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {len(data)} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")
    try:
        return _decode_request(data if data.strip() else b"{}")
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(describe_decode_error(exc, data, ProvisionRequest, "request")) from None


async def _refuse(request: Request, refused: Refused) -> None:
    error = ProvisionError(error=str(refused), code=503, reason=refused.reason, retry_after_s=refused.retry_after_s)
    await _respond_error(request, error)


async def _respond_error(request: Request, error: ProvisionError) -> None:
    # micro needs the code as a string; the JSON body carries the details (DESIGN §9).
    await request.respond_error(str(error.code), error.error.splitlines()[0][:200], data=encode(error))
