"""Follow a JetStream stream without creating a consumer: batched direct gets, polled.

Why not an ordered consumer: whoever may create a consumer can give it a push
`deliver_subject` of any subject, and the server then publishes the stored
messages there, inside the account, where ACE_EVENTS captures them (nats-server
issue 8274). A direct get only answers on the requester's own reply inbox, so a
role that reads this way needs `$JS.API.DIRECT.GET.<stream>` and no consumer
grant at all. The stream must have `allow_direct` (shared.bus makes it so).

One request `{"seq": N, "batch": B, "next_by_subj": S}` (or `start_time` instead
of `seq`) is answered by up to B stored messages matching S from N on, each with
`Nats-Sequence`, `Nats-Subject`, `Nats-Time-Stamp`, then a `204 EOB` status whose
`Nats-Num-Pending` says how many more match; `404` means none (measured on
nats-server 2.15.1). Messages aged out (max-age) are simply skipped.

A follower keeps one cursor per subject filter (the server takes one filter per
request), merges the pages in stream order and moves a cursor only over what it
delivered, so a failed poll, a NATS restart or a reconnect loses and repeats
nothing: the next poll asks again from the same cursors. In a cluster any
replica may answer and a lagging one only answers with less.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.errors import describe

log = logging.getLogger(__name__)

BATCH = 256
POLL_S = 0.5  # how soon a new message shows: the events page and /api/live are read by people
REPLY_TIMEOUT_S = 5.0


class StreamReadError(RuntimeError):
    """The server did not answer a direct get as expected; the message says what came back."""


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    at: datetime  # the server's timestamp of the message
    data: bytes


@dataclass(frozen=True)
class Page:
    messages: tuple[Stored, ...]
    more: bool  # the server holds more matching messages after the last one


def direct_get_subject(stream: str) -> str:
    return f"$JS.API.DIRECT.GET.{stream}"


def request_body(start: int | datetime, subject: str, batch: int) -> bytes:
    """A batched direct get from sequence `start` (or the first message stored at or after the time
    `start`) of up to `batch` messages matching `subject`."""
    body: dict[str, object] = {"batch": batch, "next_by_subj": subject}
    if isinstance(start, datetime):
        body["start_time"] = start.astimezone(UTC).isoformat().replace("+00:00", "Z")
    else:
        body["seq"] = max(start, 1)
    return json.dumps(body).encode()


def stored_of(msg: Msg) -> Stored:
    headers = msg.headers or {}
    try:
        return Stored(
            seq=int(headers["Nats-Sequence"]),
            subject=headers["Nats-Subject"],
            at=datetime.fromisoformat(headers["Nats-Time-Stamp"]),
            data=msg.data,
        )
    except (KeyError, ValueError) as exc:
        raise StreamReadError(f"a direct get answer without a usable {exc} header") from None


async def read_page(
    nc: Client, stream: str, start: int | datetime, subject: str, batch: int = BATCH, timeout: float = REPLY_TIMEOUT_S
) -> Page:
    """One batched direct get on `stream`; StreamReadError if it does not end as the server ends one."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(direct_get_subject(stream), request_body(start, subject, batch), reply=inbox)
        messages: list[Stored] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                raise StreamReadError(
                    f"{stream}: no end of batch within {timeout:g}s ({len(messages)} messages came)"
                ) from None
            status = (msg.headers or {}).get("Status")
            if status is None:
                messages.append(stored_of(msg))
            elif status == "204":
                pending = int((msg.headers or {}).get("Nats-Num-Pending", "0"))
                return Page(tuple(messages), more=pending > 0 and bool(messages))
            elif status == "404" and not messages:
                return Page((), more=False)
            elif status == "503":
                raise StreamReadError(
                    f"{stream}: nobody answers direct gets (the stream is missing or has no allow_direct: "
                    "run `aceorch setup` with the admin key)"
                )
            else:
                description = (msg.headers or {}).get("Description", "")
                raise StreamReadError(f"{stream}: direct get answered {status} {description}".rstrip())
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:
            pass  # the connection is going: the subscription goes with it


def merge(pages: dict[str, Page]) -> tuple[list[Stored], dict[str, int]]:
    """The messages of one round in stream order, up to the first page that stopped short (beyond it
    another filter's messages may still be missing), and each filter's last delivered sequence."""
    horizon = min((page.messages[-1].seq for page in pages.values() if page.more), default=None)
    unique: dict[int, Stored] = {}
    reached: dict[str, int] = {}
    for subject, page in pages.items():
        for stored in page.messages:
            if horizon is not None and stored.seq > horizon:
                break
            unique[stored.seq] = stored
            reached[subject] = stored.seq
    return [unique[seq] for seq in sorted(unique)], reached


class StreamFollower:
    """Delivers every message of `stream` matching one of `subjects`, in stream order, once: from
    `since` (a time; else from the stream's first message), then live by polling every `poll_s`."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        subjects: Sequence[str],
        deliver: Callable[[Stored], None],
        poll_s: float = POLL_S,
        since: datetime | None = None,
        batch: int = BATCH,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.deliver = deliver
        self.poll_s = poll_s
        self.since = since
        self.batch = batch
        self.cursors: dict[str, int] = dict.fromkeys(subjects, 0)  # last delivered sequence per filter
        self.failures = 0  # polls that failed (each retried at the next poll)
        self._task: asyncio.Task[None] | None = None

    def _start_of(self, subject: str) -> int | datetime:
        cursor = self.cursors[subject]
        return cursor + 1 if cursor or self.since is None else self.since

    async def catch_up(self) -> int:
        """Read until the server has nothing more; the number of messages delivered."""
        delivered = 0
        while True:
            subjects = list(self.cursors)
            pages = await asyncio.gather(
                *(read_page(self.nc, self.stream, self._start_of(s), s, self.batch) for s in subjects)
            )
            messages, reached = merge(dict(zip(subjects, pages, strict=True)))
            for subject, seq in reached.items():
                self.cursors[subject] = max(self.cursors[subject], seq)
            for stored in messages:
                self.deliver(stored)
            delivered += len(messages)
            if not any(page.more for page in pages):
                return delivered

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.catch_up()
                if failing:
                    log.info("%s: reading again", self.stream)
                failing = False
            except (StreamReadError, nats.errors.Error, OSError) as exc:
                self.failures += 1
                if not failing:  # once per outage, not every poll
                    log.warning("%s: read failed (%s); retrying every %gs", self.stream, describe(exc), self.poll_s)
                failing = True
            except Exception:  # a bug in a delivery callback: say so loudly, keep following
                log.exception("%s: delivering a message failed", self.stream)
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
