"""Talking to the state-keeper from other services: claims and reads (request/reply), events (JetStream).

Errors come back as micro error headers plus a JSON body; they become
`KeeperError(code, message)`, so callers branch on `code` (409 busy, 404 gone)
instead of parsing text. A timeout or no responder is `code=503`.
"""

from __future__ import annotations

import asyncio
import json
import logging

import msgspec
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import names
from shared.errors import describe
from shared.schemas import (
    ClaimPurpose,
    ClaimReply,
    ClaimRequest,
    EngineList,
    EngineRecord,
    GetRequest,
    ListRequest,
    ReleaseRequest,
    SelectReply,
    SelectRequest,
    decoder,
    encode,
)

log = logging.getLogger(__name__)

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
PUBLISH_ATTEMPTS = 5
_decode_claim = decoder(ClaimReply)
_decode_list = decoder(EngineList)
_decode_engine = decoder(EngineRecord)
_decode_select = decoder(SelectReply)


class KeeperError(Exception):
    def __init__(self, code: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s  # said by a 503 no_capacity: when asking again may help


class KeeperClient:
    def __init__(self, nc: Client, js: JetStreamContext | None = None, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._js = js
        self._timeout_s = timeout_s

    async def report(self, subject: str, event: msgspec.Struct, msg_id: str) -> bool:
        """Publish an event to ACE_EVENTS; retried with the same Nats-Msg-Id, so never applied twice."""
        assert self._js is not None, "KeeperClient needs a JetStream context to report events"
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
                return True
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning(
                    "%s %s: publish failed (%s), %d retries remaining",
                    subject,
                    msg_id,
                    describe(exc),
                    PUBLISH_ATTEMPTS - attempt,
                )
                await asyncio.sleep(0.5 * attempt)
        return False

    async def claim(self, container_id: str, purpose: ClaimPurpose, holder: str) -> str:
        """The claim id; KeeperError 409 when busy (streams, reservations, claimed, external)."""
        request = ClaimRequest(container_id=container_id, purpose=purpose, holder=holder)
        return _decode_claim(await self._ask(names.ENGINE_CLAIM, encode(request))).claim_id

    async def release(self, container_id: str, claim_id: str) -> None:
        await self._ask(names.ENGINE_RELEASE, encode(ReleaseRequest(container_id=container_id, claim_id=claim_id)))

    async def get(self, container_id: str) -> EngineRecord | None:
        try:
            return _decode_engine(await self._ask(names.ENGINE_GET, encode(GetRequest(container_id=container_id))))
        except KeeperError as exc:
            if exc.code == 404:
                return None
            raise

    async def select(self, request: SelectRequest) -> SelectReply:
        """An engine and a reservation; KeeperError 503 (with `retry_after_s`) when none has capacity."""
        return _decode_select(await self._ask(names.ENGINE_SELECT, encode(request)))

    async def engines(self) -> list[EngineRecord]:
        return _decode_list(await self._ask(names.ENGINE_LIST, encode(ListRequest()))).engines

    async def _ask(self, subject: str, data: bytes) -> bytes:
        try:
            msg = await self._nc.request(subject, data, timeout=self._timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise KeeperError(503, f"{subject}: no answer from the state-keeper ({type(exc).__name__})") from None
        code = (msg.headers or {}).get(ERROR_CODE_HEADER)
        if code:
            text, retry_after_s = _error_of(msg.data)
            raise KeeperError(int(code), f"{subject}: {text}", retry_after_s)
        return msg.data


def _error_of(data: bytes) -> tuple[str, float | None]:
    """The error body's text and `retry_after_s` (None when absent or not a number)."""
    try:
        body = json.loads(data)
        text = str(body["error"])
    except (ValueError, KeyError, TypeError):
        return data.decode(errors="replace")[:200] or "error without a body", None
    retry = body.get("retry_after_s")
    return text, float(retry) if isinstance(retry, (int, float)) and not isinstance(retry, bool) else None
