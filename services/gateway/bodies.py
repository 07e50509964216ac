"""Request and reply bodies that exist only on the HTTP side (the rest are shared.schemas), decoded strictly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from services.gateway.errors import AnyRequest
from services.gateway.fleet import ApiError
from shared.compat import StreamEndedBody, StreamStartedBody
from shared.decode_errors import describe_decode_error
from shared.schemas import Key, Labels, Port, ProvisionRequest, SelectRequest, ShortText

T = TypeVar("T")

# A DNS name, IPv4 or IPv6 address: what an engine's HTTP API can be reached at.
Host = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:\[\]-]+$", min_length=1, max_length=253)]


class RegisterEngineBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /engines`: an engine that runs elsewhere (runtime `external`), registered by address."""

    host: Host
    port: Port
    container_id: Key | None = None
    container_name: ShortText | None = None
    labels: Labels = {}


class EngineAccepted(msgspec.Struct, frozen=True, kw_only=True):
    container_id: str
    detail: str


class StreamAccepted(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    container_id: str | None = None


NatsState = Literal["connected", "reconnecting", "disconnected", "closed"]
Missing = Literal["nats", "state-keeper"]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable"]
    nats: NatsState
    engines: int
    active_streams: int


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ready", "unavailable"]
    missing: list[Missing]


# ---------------------------------------------------------------- strict decoding

STRICT_BODIES = (SelectRequest, RegisterEngineBody, StreamStartedBody, StreamEndedBody, ProvisionRequest)
_STRICT_DECODERS: dict[type, Callable[[bytes], Any]] = {
    kind: msgspec.json.Decoder(kind | None).decode for kind in STRICT_BODIES
}


async def strict_body(request: AnyRequest, kind: type[T]) -> T | None:
    """The body decoded strictly, as the contract says (DESIGN §3); None for an empty body or `null`.

    Litestar has already parsed `data` (for the OpenAPI document and the
    common errors), but its conversion is lenient: "6878" becomes 6878 and 0
    becomes a date. Decoding the same bytes strictly is the authority.
    """
    raw = await request.body()
    try:
        decode: Callable[[bytes], T | None] = _STRICT_DECODERS[kind]
        return decode(raw if raw.strip() else b"null")
    except msgspec.ValidationError as exc:
        raise ApiError(422, describe_decode_error(exc, raw, kind)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, describe_decode_error(exc, raw, kind)) from None
