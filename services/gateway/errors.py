"""Every error answer is `{"error": "...", "code": N}` (ErrorReply, as on NATS); never a traceback.

Malformed JSON → 400, a body that parses but does not fit the schema → 422,
bad query or path values → 400, oversize bodies → 413. Anything unexpected
is logged here with its traceback and answered with a plain 500.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import msgspec
from litestar import MediaType, Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler

from services.gateway.fleet import ApiError
from shared.decode_errors import describe_decode_error, describe_invalid
from shared.policy.web import check_request
from shared.schemas import ErrorReply

if TYPE_CHECKING:
    from litestar.types import HTTPScope

log = logging.getLogger(__name__)

# Litestar's connections are generic in user, auth and state; the gateway uses none of them.
AnyRequest: TypeAlias = Request[Any, Any, Any]
AnyConnection: TypeAlias = ASGIConnection[Any, Any, Any, Any]
Guard: TypeAlias = Callable[[AnyConnection, BaseRouteHandler], None]

# Requests the browser guard refused, by status (421 host, 403 origin, 415 content type); in /metrics.
REFUSED: Counter[int] = Counter()

# Python names of parameters whose wire name differs (`state` is reserved by Litestar).
WIRE_NAMES = {"engine_state": "state"}


class JsonRequest(Request[Any, Any, Any]):
    """Bodies that do not decode are 400s in our words (Litestar passes msgspec's text on, or lets some escape as 500s)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except (UnicodeDecodeError, SerializationException) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            body, kind = await self.body(), body_type(self)
            raise ClientException(describe_decode_error(_typed_error(cause, body, kind), body, kind)) from None
        except RecursionError:
            raise ClientException("body is not valid JSON: nested deeper than the decoder's depth limit") from None


def _typed_error(cause: Exception, body: bytes, kind: Any) -> Exception:
    """Litestar decodes without the route's type, so a value error's place is vague (`$[...]`); our type names the field."""
    if kind is not None and isinstance(cause, msgspec.ValidationError):
        try:
            msgspec.json.decode(body, type=kind)
        except msgspec.DecodeError as exc:
            return exc
    return cause


def body_type(request: AnyRequest) -> Any:
    """The type the route decodes its body into (for saying what is expected), or None."""
    field = request.route_handler.parsed_data_field
    return field.annotation if field is not None else None


def error_response(
    status: int, message: str, retry_after_s: float | None = None, headers: dict[str, str] | None = None
) -> Response[ErrorReply]:
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return Response(
        ErrorReply(error=message, code=status, retry_after_s=retry_after_s),
        status_code=status,
        headers=headers,
        media_type=MediaType.JSON,
    )


def on_api_error(request: AnyRequest, exc: ApiError) -> Response[ErrorReply]:
    return error_response(exc.status, str(exc), exc.retry_after_s)


def on_http_exception(request: AnyRequest, exc: HTTPException) -> Response[ErrorReply]:
    status, message = exc.status_code, exc.detail
    if isinstance(exc, ValidationException):
        status, message = _describe_validation(exc, body_type(request))
    elif isinstance(exc, NotFoundException) and message == "Not Found":
        message = f"no such resource: {request.method} {request.url.path}"
    elif isinstance(exc, MethodNotAllowedException):
        message = f"{request.method} is not allowed on {request.url.path}"
    elif status == 413:
        message = f"request body too large: {request.app.request_max_body_size} bytes at most (MAX_BODY_BYTES)"
    return error_response(status, message, headers=exc.headers)


def on_unexpected(request: AnyRequest, exc: Exception) -> Response[ErrorReply]:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal error")


def _describe_validation(exc: ValidationException, body_kind: Any) -> tuple[int, str]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts, in_body = [], False
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        source, key, message = str(problem.get("source", "")), problem.get("key"), str(problem.get("message", ""))
        if source.endswith("body"):
            in_body = True
            if message == "'data'" or (key == "data" and not message):
                parts.append("a JSON object body is required")
                continue
            parts.append(describe_invalid(body_kind, message, None if key in (None, "", "data") else f"$.{key}"))
        else:
            name = source.rsplit(".", 1)[-1].lower() or "parameter"
            parts.append(f"invalid {name} parameter {WIRE_NAMES.get(str(key), key)}: {message}")
    if not parts:
        return 400, exc.detail
    # Well-formed JSON that does not fit the schema is unprocessable; bad query/path values are bad requests.
    return (422 if in_body else 400), "; ".join(parts)


def api_key_guard(api_key: str, query_param: str | None = None) -> Guard:
    """Mutating endpoints need `Authorization: Bearer <API_KEY>`: 401 without a token, 403 with a wrong one.

    With `query_param`, `?<query_param>=<API_KEY>` is accepted too: a browser's
    EventSource (`/api/live`) cannot send headers.
    """
    expected = api_key.encode()
    how = "Authorization: Bearer <API_KEY>" + (f" or ?{query_param}=<API_KEY>" if query_param else "")

    def guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
        scheme, _sep, token = connection.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if query_param and not token and connection.query_params.get(query_param):
            scheme, token = "bearer", connection.query_params[query_param]
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException(
                detail=f"this endpoint needs {how}",
                headers={"WWW-Authenticate": 'Bearer realm="aceorch"'},
            )
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected):
            raise PermissionDeniedException(detail="the API key is not valid")

    return guard


def browser_guard(hosts: frozenset[str] | None) -> Guard:
    """Every route: `Host` is one of ours; writes: same-origin `Origin`, JSON bodies (shared.policy.web)."""

    def guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
        headers = connection.headers
        length = headers.get("content-length", "").strip()
        has_body = "transfer-encoding" in headers or (length not in ("", "0"))
        refusal = check_request(
            cast("HTTPScope", connection.scope)["method"],  # the gateway has HTTP routes only, no websocket
            headers.get("host"),
            headers.get("origin"),
            headers.get("content-type"),
            has_body,
            hosts,
        )
        if refusal is not None:
            REFUSED[refusal.status] += 1
            raise ApiError(refusal.status, refusal.message)

    return guard
