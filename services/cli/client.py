"""The CLI's side of NATS: a bounded connect and request/reply with readable errors.

Client commands must fail within seconds, with a sentence a person can act
on, when NATS or the state-keeper is not there — never hang, never print a
traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared import auth
from shared.schemas import encode

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 5.0


class CliError(Exception):
    """A failure explained in one line; the CLI prints it and exits non-zero."""

    def __init__(self, message: str, code: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


def default_nats_url() -> str:
    return os.environ.get("NATS_URL") or DEFAULT_NATS_URL


@asynccontextmanager
async def connected(url: str, name: str = "aceorch-cli", nkey: str = "") -> AsyncIterator[Client]:
    """A NATS connection that fails fast with a clear message; closed on exit. With `nkey` (a seed
    file) it connects as that key's role; an action the role is not granted ends the command at
    once with a CliError saying what was denied (not a timeout)."""
    denied: list[auth.Violation] = []
    refusals: list[Exception] = []
    task = asyncio.current_task()

    async def on_error(exc: Exception) -> None:  # the default error_cb prints tracebacks
        if auth.refused(exc):
            refusals.append(exc)
        violation = auth.violation(str(exc))
        if violation is not None and not denied:
            denied.append(violation)
            if task is not None:
                task.cancel()

    try:
        options: dict[str, Any] = {**auth.client_options(nkey)}
    except auth.AuthError as exc:
        raise CliError(f"--nkey/NATS_NKEY: {exc}") from None
    try:
        options.update(auth.tls_options(*(os.environ.get(f"NATS_TLS_{part}", "") for part in ("CA", "CERT", "KEY"))))
    except auth.AuthError as exc:
        raise CliError(str(exc)) from None
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=url.split(","),
                name=name,
                connect_timeout=min(CONNECT_TIMEOUT_S, 2.0),
                max_reconnect_attempts=2,
                reconnect_time_wait=0.2,
                error_cb=on_error,
                **options,
            ),
            timeout=CONNECT_TIMEOUT_S,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        if not (refusals or auth.refused(exc)):
            raise CliError(
                f"cannot connect to NATS at {url} ({type(exc).__name__}): is `aceorch up` running? "
                "Pass --nats-url or set NATS_URL."
            ) from None
        raise CliError(
            f"NATS at {url} refused {'the key in ' + nkey if nkey else 'a connection without a key'}: "
            "pass --nkey (or set NATS_NKEY) to a role key the server knows, e.g. data/auth/operator.nk"
        ) from None
    try:
        yield nc
    except asyncio.CancelledError:
        if not denied:
            raise
        if task is not None:
            task.uncancel()
        raise CliError(auth.explain(denied[0], auth.role_of(Path(nkey)))) from None
    finally:
        await nc.close()
    if denied:  # denied after the last await that could be cancelled
        raise CliError(auth.explain(denied[0], auth.role_of(Path(nkey))))


async def request(
    nc: Client,
    subject: str,
    payload: msgspec.Struct | dict[str, Any],
    decode: Callable[[bytes], Any] | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Any:
    """Reply of a state-keeper endpoint (a dict, or `decode(data)`); error replies raise CliError."""
    try:
        msg = await nc.request(subject, encode(payload), timeout=timeout)
    except NoRespondersError:
        raise CliError(f"no state-keeper answers {subject}: is it running?") from None
    except NatsTimeout:
        raise CliError(f"{subject}: no reply within {timeout:g}s (state-keeper overloaded or restarting?)") from None
    headers = msg.headers or {}
    if code := headers.get("Nats-Service-Error-Code"):
        body = _json_or_empty(msg.data)
        raise CliError(
            f"{subject} failed ({code}): {body.get('error') or headers.get('Nats-Service-Error')}",
            code=int(code),
            retry_after_s=body.get("retry_after_s"),
        )
    try:
        return decode(msg.data) if decode else json.loads(msg.data)
    except (ValueError, msgspec.ValidationError) as exc:
        raise CliError(f"{subject}: unexpected reply ({exc}): {msg.data[:200]!r}") from None


def _json_or_empty(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
