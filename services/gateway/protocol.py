"""uvicorn's HTTP/1.1 protocol with a deadline for the request head (slowloris).

uvicorn times out idle keep-alive connections, but not a connection that
sends its request head slowly: one byte a second kept a connection (and a
file descriptor, and a place under `limit_concurrency`) for as long as the
client liked. Here the head must be complete within GATEWAY_HEADER_TIMEOUT_S
of the connection opening or of the previous response; otherwise the
connection is closed. The deadline is set once per head, never extended by
the bytes that trickle in.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeadDeadline:
    """Counts connections cut off for a late request head (shown in /metrics)."""

    cut_off = 0


def head_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """An H11Protocol class whose request heads must arrive within `timeout_s`."""

    class HeadDeadlineH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn narrows it
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Client IDLE: no complete head yet in this cycle (none at all, or part of one).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                if self.transport.is_closing():
                    return
                HeadDeadline.cut_off += 1
                log.debug("closed a connection from %s: no complete request head within %gs", self.client, timeout_s)
                self.transport.close()

    return HeadDeadlineH11
