"""acesim — a simulated AceStream engine (standard library only).

The real engine can't be installed in tests or the demo, so this stands in for
it on the wire: the same URLs and JSON shapes as the engine's HTTP API on
6878, a cache directory that fills while streams play, and faults on demand
through ``/__sim/``.  ``acesim --ports A-B`` runs one engine per port in ONE
process and ONE event loop, so a 1,000-engine fleet costs one interpreter.

Playback is real MPEG-TS (getstream) and HLS (manifest.m3u8): every content
is a live channel paced by the wall clock at ``--bitrate``, or ``--media``
loops a TS file.  Ids starting with ``offline`` fail to load.  Faults
(``/__sim/fault?mode=…``): hang, slow, error, badjson, refuse, crash, and for
playback stall, starve and prebuf; the README's acesim table says what each
does.  An idle engine costs no task and no timer; a playing stream costs one
period (0.384 s of stream) built and written per period.

The file is self-contained on purpose: it can be copied alone into a minimal
image and run with bare ``python3``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SIM_VERSION = "1.0"
SERVER_HEADER = f"acesim/{SIM_VERSION}"
ENGINE_VERSION = {"code": 3021100, "platform": "linux", "version": "3.2.11"}
ENGINE_REVISION = f"acesim-{SIM_VERSION}"

# Timings that shape what clients observe.
PREBUF_S = 2.0  # a new session reports "prebuf" this long, then "dl"
SESSION_IDLE_TIMEOUT_S = 60.0  # no player and no stat for this long → dropped
TICK_S = 1.0  # cache growth / idle sweep period
CACHE_BYTES_PER_TICK = 64 * 1024  # ~64 KiB/s per live session

DEFAULT_SLOW_MS = 1000
DEFAULT_ERROR_CODE = 500
DEFAULT_PREBUF_FAULT_S = 5.0
FAULT_MODES = ("none", "hang", "slow", "error", "badjson", "refuse", "crash", "stall", "starve", "prebuf")
BAD_JSON = b'{"result": {"playlist_lo'
LISTEN_BACKLOG = 128
DEAD_SESSION = "unknown playback session id"
NO_CONTENT = "failed to load content"
# Content keys (id, content_id, url, magnet) starting with this are content the
# swarm doesn't have: getstream answers "failed to load content", as the real
# engine does for a dead id.  Every other key plays.
OFFLINE_PREFIX = "offline"
FAULT_POLL_S = 0.25  # playback paused by a fault re-checks the engine this often


def _ts_packets(count: int) -> bytes:
    """`count` MPEG-TS packets on one PID with a cycling continuity counter.

    Filler for the cache files; use a multiple of 16 packets so back-to-back
    chunks keep the continuity counter consistent.
    """
    pid = 0x0100
    packets = bytearray()
    for i in range(count):
        header = bytes((0x47, (pid >> 8) & 0x1F, pid & 0xFF, 0x10 | (i & 0x0F)))
        packets += header + b"\xff" * 184
    return bytes(packets)


CACHE_CHUNK = _ts_packets(349)[:CACHE_BYTES_PER_TICK]  # 64 KiB per tick


# --------------------------------------------------------------------------
# MPEG-TS: every content is a live channel on the wall clock
# --------------------------------------------------------------------------
#
# A channel is a sequence of "periods" numbered from the Unix epoch: period n
# covers [n, n + 1) × period_s of wall-clock time, and its bytes depend only
# on the content and n.  Every engine playing a content at the same moment
# sends the same bytes (a broadcast, as in a real swarm), a player joins at
# the live period, and a test can rebuild what it should have received.

TS = 188
PAT_PID, PMT_PID, AUDIO_PID, NULL_PID = 0x0000, 0x1000, 0x0100, 0x1FFF
FRAME_TICKS = 2160  # one MPEG-1 Layer II frame: 1152 samples at 48 kHz, in 90 kHz ticks
# 16 frames of 2 packets: every PID's continuity counter wraps exactly once a
# period, so one template serves every period with only clocks patched in.
FRAMES_PER_PERIOD = 16
PERIOD_S = FRAMES_PER_PERIOD * FRAME_TICKS / 90_000  # 0.384 s
PTS_DELAY_TICKS = 9_000  # presentation 100 ms after arrival: the decoder's buffering margin
PTS_WRAP = 1 << 33
DEFAULT_BITRATE = 1_500_000
MIN_BITRATE = 300_000  # PAT + PMT + 2 audio packets per 24 ms frame need ~250 kbit/s
# Silent MPEG-1 Layer II, 64 kbit/s mono 48 kHz: a header then no bit allocation.
MP2_SILENCE = b"\xff\xfd\x44\xc0" + bytes(188)
# A player joining gets the engine's buffer first, this far behind live, at
# once: players and ffprobe (which reads 5 s of an MPEG-TS stream before it
# reports) start without waiting for the wall clock.
JOIN_BACKLOG_S = 5.0
SEGMENT_PERIODS = 8  # HLS segments of 8 periods (≈3 s)
PLAYLIST_SEGMENTS = 3  # a live playlist lists the last 3 complete segments
SEGMENT_HISTORY = 10  # segments older than this many are gone, as in a live window
# Stream ids whose PES packets carry no optional header (hence no PTS).
_PES_WITHOUT_HEADER = {0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF}

_CLOCK_OFFSET = time.time() - time.monotonic()


def sim_clock() -> float:
    """Wall-clock seconds that never jump back: channel time."""
    return time.monotonic() + _CLOCK_OFFSET


def crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _psi_packet(pid: int, cc: int, table_id: int, body: bytes) -> bytes:
    length = len(body) + 4  # + CRC
    section = bytes((table_id,)) + struct.pack(">H", 0xB000 | length) + body
    section += struct.pack(">I", crc32_mpeg2(section))
    payload = b"\x00" + section  # pointer_field 0
    header = struct.pack(">BHB", 0x47, 0x4000 | pid, 0x10 | cc)
    return header + payload + b"\xff" * (TS - 4 - len(payload))


def _pes_packet(pid: int, cc: int, payload: bytes, *, start: bool, af_fields: bytes = b"") -> bytes:
    """A PES-carrying packet; whatever the payload leaves is adaptation-field stuffing."""
    header = struct.pack(">BHB", 0x47, (0x4000 if start else 0) | pid, cc)
    room = TS - 4 - len(payload)
    if room == 0 and not af_fields:
        return header[:3] + bytes((0x10 | cc,)) + payload
    flags = af_fields[:1] or b"\x00"
    fields = flags + af_fields[1:]
    stuffing = room - 1 - len(fields)
    if stuffing < 0:
        raise ValueError("payload too large for one packet")
    af = bytes((room - 1,)) + fields + b"\xff" * stuffing
    return header[:3] + bytes((0x30 | cc,)) + af + payload


def pts_bytes(pts: int, prefix: int = 0x2) -> bytes:
    pts %= PTS_WRAP
    return bytes(
        (
            (prefix << 4) | ((pts >> 29) & 0x0E) | 1,
            (pts >> 22) & 0xFF,
            ((pts >> 14) & 0xFE) | 1,
            (pts >> 7) & 0xFF,
            ((pts << 1) & 0xFE) | 1,
        )
    )


def read_pts(field: bytes | bytearray) -> int:
    return ((field[0] >> 1) & 0x07) << 30 | field[1] << 22 | (field[2] >> 1) << 15 | field[3] << 7 | field[4] >> 1


def pcr_bytes(pcr: int) -> bytes:
    """A 27 MHz clock value as the 6-byte PCR field (33-bit base, 9-bit extension)."""
    base, ext = divmod(pcr, 300)
    return ((base % PTS_WRAP) << 15 | 0x3F << 9 | ext).to_bytes(6, "big")


def read_pcr(field: bytes | bytearray) -> int:
    value = int.from_bytes(field, "big")
    return (value >> 15) * 300 + (value & 0x1FF)


class Channel:
    """A content's live transport stream, one period at a time."""

    period_s: float = PERIOD_S

    def period(self, n: int) -> bytes:
        raise NotImplementedError

    def live_period(self, now: float) -> int:
        return int(now // self.period_s)


class SyntheticChannel(Channel):
    """PAT, PMT and silent MP2 audio carrying the PCR, padded with null packets
    to the bitrate; the null packets name the content (its infohash)."""

    def __init__(self, infohash: str, bitrate: int) -> None:
        identity = _infohash_bytes(infohash)
        tsid = int.from_bytes(identity[:2], "big")
        pat = _psi_packet_factory(PAT_PID, 0x00, struct.pack(">HBBBHH", tsid, 0xC1, 0, 0, 1, 0xE000 | PMT_PID))
        pmt_body = struct.pack(">HBBBHH", 1, 0xC1, 0, 0, 0xE000 | AUDIO_PID, 0xF000)
        pmt_body += struct.pack(">BHH", 0x03, 0xE000 | AUDIO_PID, 0xF000)  # MPEG-1 audio
        pmt = _psi_packet_factory(PMT_PID, 0x02, pmt_body)
        null = struct.pack(">BHB", 0x47, NULL_PID, 0x10) + identity + b"\xff" * (TS - 4 - len(identity))
        total = round(bitrate * PERIOD_S / (TS * 8))
        template = bytearray()
        self._clocks: list[tuple[int, int]] = []  # (PCR offset, PTS offset) per frame
        for i in range(FRAMES_PER_PERIOD):
            slot = (i + 1) * total // FRAMES_PER_PERIOD - i * total // FRAMES_PER_PERIOD
            pes = b"\x00\x00\x01\xc0" + struct.pack(">H", 8 + len(MP2_SILENCE)) + b"\x80\x80\x05"
            pes += pts_bytes(0) + MP2_SILENCE
            first = _pes_packet(AUDIO_PID, (2 * i) & 0x0F, pes[:176], start=True, af_fields=b"\x50" + pcr_bytes(0))
            second = _pes_packet(AUDIO_PID, (2 * i + 1) & 0x0F, pes[176:], start=False)
            pcr_at = len(template) + 2 * TS + 6
            pts_at = len(template) + 2 * TS + 12 + 9
            template += pat(i & 0x0F) + pmt(i & 0x0F) + first + second + null * (slot - 4)
            self._clocks.append((pcr_at, pts_at))
        self._template = bytes(template)

    def period(self, n: int) -> bytes:
        data = bytearray(self._template)
        for i, (pcr_at, pts_at) in enumerate(self._clocks):
            ticks = (n * FRAMES_PER_PERIOD + i) * FRAME_TICKS
            data[pcr_at : pcr_at + 6] = pcr_bytes(ticks * 300)
            data[pts_at : pts_at + 5] = pts_bytes(ticks + PTS_DELAY_TICKS)
        return bytes(data)


def _psi_packet_factory(pid: int, table_id: int, body: bytes) -> Callable[[int], bytes]:
    packets = [_psi_packet(pid, cc, table_id, body) for cc in range(16)]
    return packets.__getitem__


def _infohash_bytes(infohash: str) -> bytes:
    try:
        return bytes.fromhex(infohash)[:20].ljust(20, b"\x00")
    except ValueError:
        return hashlib.sha1(infohash.encode()).digest()


class MediaError(Exception):
    pass


class MediaLoop:
    """A real TS file repeated for ever, as one seamless live stream.

    Loop L is the file with its clocks (PCR, PTS, DTS) moved on by L × the
    file's duration and each PID's continuity counters carried on, so a
    player sees one stream, not a file restarting.
    """

    def __init__(self, data: bytes, fallback_bitrate: int) -> None:
        start = _sync_offset(data)
        self.count = (len(data) - start) // TS
        if self.count < 2:
            raise MediaError("no MPEG-TS packets found (188-byte packets starting with 0x47)")
        self.data = data[start : start + self.count * TS]
        self._cc: list[tuple[int, int]] = []  # (offset, pid) of packets with a payload
        self._pcr: list[int] = []  # offsets of PCR fields
        self._pts: list[int] = []  # offsets of PTS and DTS fields
        per_pid: dict[int, int] = {}
        pcr_pid, first, last = None, None, None
        for index in range(self.count):
            at = index * TS
            packet = self.data[at : at + TS]
            if packet[0] != 0x47:
                raise MediaError(f"lost packet sync at packet {index}")
            pid = (packet[1] & 0x1F) << 8 | packet[2]
            control = packet[3] >> 4 & 0x03
            pos = 4
            if control & 0x02:
                af_len = packet[4]
                if af_len and packet[5] & 0x10 and af_len >= 7:
                    self._pcr.append(at + 6)
                    pcr = read_pcr(packet[6:12])
                    if pcr_pid is None:
                        pcr_pid, first = pid, (index, pcr)
                    if pid == pcr_pid:
                        last = (index, pcr)
                pos += 1 + af_len
            if not control & 0x01 or pid == NULL_PID:
                continue
            self._cc.append((at + 3, pid))
            per_pid[pid] = per_pid.get(pid, 0) + 1
            if packet[1] & 0x40 and packet[pos : pos + 3] == b"\x00\x00\x01" and pos + 19 <= TS:
                if packet[pos + 3] not in _PES_WITHOUT_HEADER:
                    flags = packet[pos + 7] >> 6
                    if flags & 0x02:
                        self._pts.append(at + pos + 9)
                    if flags == 0x03:
                        self._pts.append(at + pos + 14)
        self._per_pid = per_pid
        if first is not None and last is not None and last[1] > first[1]:
            ticks_per_packet = (last[1] - first[1]) / (last[0] - first[0])
        else:  # no usable clock in the file: pace it at the configured bitrate
            ticks_per_packet = 27_000_000 * TS * 8 / fallback_bitrate
        self.bitrate = round(27_000_000 * TS * 8 / ticks_per_packet)
        self.duration_pcr = round(ticks_per_packet * self.count / 300) * 300
        packets_per_s = 27_000_000 / ticks_per_packet
        self.packets_per_period = max(1, round(packets_per_s * PERIOD_S))
        self.period_s = self.packets_per_period / packets_per_s
        self._loops: dict[int, bytes] = {}

    def loop(self, number: int) -> bytes:
        cached = self._loops.get(number)
        if cached is not None:
            return cached
        data = bytearray(self.data)
        shift = number * self.duration_pcr
        for at in self._pcr:
            data[at : at + 6] = pcr_bytes(read_pcr(data[at : at + 6]) + shift)
        for at in self._pts:
            prefix = data[at] >> 4
            data[at : at + 5] = pts_bytes(read_pts(data[at : at + 5]) + shift // 300, prefix)
        carry = {pid: number * count & 0x0F for pid, count in self._per_pid.items()}
        for at, pid in self._cc:
            data[at] = (data[at] & 0xF0) | ((data[at] + carry[pid]) & 0x0F)
        if len(self._loops) >= 4:  # players sit within a loop or two of each other
            del self._loops[min(self._loops)]
        self._loops[number] = bytes(data)
        return self._loops[number]

    def packets(self, first: int, count: int) -> bytes:
        out = bytearray()
        while count > 0:
            number, index = divmod(first, self.count)
            take = min(count, self.count - index)
            out += self.loop(number)[index * TS : (index + take) * TS]
            first += take
            count -= take
        return bytes(out)


class MediaChannel(Channel):
    """A content playing the media loop, at a phase of its own so channels differ."""

    def __init__(self, media: MediaLoop, infohash: str) -> None:
        self.media = media
        self.period_s = media.period_s
        self.phase = int.from_bytes(_infohash_bytes(infohash)[:4], "big") % media.count

    def period(self, n: int) -> bytes:
        size = self.media.packets_per_period
        return self.media.packets(self.phase + n * size, size)


def _sync_offset(data: bytes) -> int:
    for offset in range(min(TS, len(data))):
        if all(data[at] == 0x47 for at in range(offset, min(len(data), offset + 5 * TS), TS)):
            return offset
    raise MediaError("no MPEG-TS packet sync (0x47 every 188 bytes) found")


def log(message: str) -> None:
    print(f"acesim: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# HTTP/1.1: just enough of it (request line, headers, keep-alive, small bodies)
# --------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]  # names lower-cased; last value wins

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after this response
    after: Callable[[], None] | None = None  # runs once the reply is sent


def json_response(payload: Any, status: int = 200, **kwargs: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), **kwargs)


def dead_session(status: int = 200) -> Response:
    return json_response({"response": None, "error": DEAD_SESSION}, status)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    await _discard_body(reader, headers)
    url = urlsplit(target)
    # First value wins, like the engine's own query parsing.
    query: dict[str, str] = {}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Request(method.upper(), url.path or "/", query, version, headers)


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    # Engine API calls are GETs; bodies are read only to keep the stream framed.
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(501, "chunked request bodies are not supported")
    length = headers.get("content-length", "0") or "0"
    if not length.isdigit():
        raise BadRequest(400, "bad content-length")
    if int(length):
        await reader.readexactly(int(length))


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_response(writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head_only: bool) -> None:
    headers = {
        "Server": SERVER_HEADER,
        "Date": formatdate(usegmt=True),
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "keep-alive" if keep_alive else "close",
        **response.headers,
    }
    writer.write(_head(response.status, headers))
    if not head_only:
        writer.write(response.body)
    await writer.drain()


# --------------------------------------------------------------------------
# Engine state
# --------------------------------------------------------------------------


@dataclass
class Fault:
    mode: str = "none"
    ms: int = DEFAULT_SLOW_MS
    code: int = DEFAULT_ERROR_CODE
    s: float = DEFAULT_PREBUF_FAULT_S  # prebuf: seconds before a player's first bytes

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "ms": self.ms, "code": self.code, "s": self.s}


@dataclass
class Session:
    """One content session; every getstream call for it adds a player key."""

    infohash: str
    started_mono: float
    started_at: float  # unix time, for /__sim/state
    last_seen: float  # monotonic; any playback chunk or stat refreshes it
    keys: list[str] = field(default_factory=list)
    bytes: int = 0  # bytes this session appended to the cache
    players: int = 0  # open playback connections
    ended: bool = False
    prebuf_until: float = 0.0  # monotonic; a prebuf fault holds players back until then
    channel: Channel | None = None  # built on first playback

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started_mono)


class Engine:
    """One simulated engine: a listening socket, its sessions and its cache."""

    def __init__(self, sim: Simulator, host: str, port: int, cache_dir: str) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.cache_dir = cache_dir
        self.fault = Fault()
        self.sessions: dict[str, Session] = {}  # infohash → session
        self.keys: dict[str, str] = {}  # playback key → infohash
        self.requests = 0  # non-/__sim/ requests received
        self.crashed = False
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self._relisten: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # keep references: the loop holds tasks weakly
        self._client_session_ids = itertools.count(random.randint(1, 10_000))
        self._write_error_logged = False

    # -- lifecycle ---------------------------------------------------------

    async def listen(self) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port, backlog=LISTEN_BACKLOG)

    def connection_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in self._connections.values() if task is not None]

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop_listening(self, abort: bool = False) -> None:
        """Close the listening socket and every open connection.

        `abort` drops them at once, unsent data and all, as a dying process
        does; a plain close would wait for a player that stopped reading.
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            if abort:
                writer.transport.abort()
            else:
                writer.close()

    def refuse(self, for_s: float | None) -> None:
        self.stop_listening()
        if for_s is not None:
            self._relisten = asyncio.get_running_loop().call_later(
                for_s, lambda: self._spawn(self._recover_from_refuse())
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover_from_refuse(self) -> None:
        self._relisten = None
        if self.fault.mode == "refuse" and not self.crashed:
            self.fault = Fault()
            await self.resume_listening()

    async def resume_listening(self) -> None:
        if self.listening or self.crashed:
            return
        try:
            await self.listen()
            log(f"engine {self.port} listening again")
        except OSError as exc:
            log(f"engine {self.port} could not listen again: {exc}")

    def crash(self) -> None:
        """Stop for good: no socket, no sessions (the process may exit too)."""
        self.crashed = True
        self._cancel_relisten()
        self.stop_listening(abort=True)
        for session in self.sessions.values():
            session.ended = True
        self.sessions.clear()
        self.keys.clear()
        log(f"engine {self.port} crashed (simulated)")
        self.sim.engine_crashed(self)

    def _cancel_relisten(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None

    # -- periodic work -----------------------------------------------------

    def tick(self, now: float) -> None:
        """Grow the cache of live sessions and drop abandoned ones."""
        for session in list(self.sessions.values()):
            if session.players == 0 and now - session.last_seen > SESSION_IDLE_TIMEOUT_S:
                self.end_session(session)
                continue
            session.bytes += self._append_cache(session.infohash)

    def _append_cache(self, infohash: str) -> int:
        # Open per write: the janitor may delete files or the whole directory
        # under us, and append-mode open recreates whatever is missing.
        path = os.path.join(self.cache_dir, f"{infohash}.dat")
        try:
            try:
                handle = open(path, "ab")
            except FileNotFoundError:
                os.makedirs(self.cache_dir, exist_ok=True)
                handle = open(path, "ab")
            with handle:
                handle.write(CACHE_CHUNK)
        except OSError as exc:
            if not self._write_error_logged:  # a full disk must not flood the log
                log(f"engine {self.port} cache write failed: {exc}")
                self._write_error_logged = True
            return 0
        return len(CACHE_CHUNK)

    def cache_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.cache_dir):
            for name in files:
                with contextlib.suppress(OSError):  # deleted while we walk
                    total += os.stat(os.path.join(root, name)).st_size
        return total

    # -- sessions ----------------------------------------------------------

    def open_session(self, infohash: str) -> tuple[Session, str]:
        """New player key on the content's one session (created if needed)."""
        now = time.monotonic()
        session = self.sessions.get(infohash)
        if session is None:
            session = Session(infohash, now, time.time(), now)
            self.sessions[infohash] = session
        key = secrets.token_hex(20)
        session.keys.append(key)
        session.last_seen = now
        self.keys[key] = infohash
        return session, key

    def find_session(self, infohash: str, key: str) -> Session | None:
        if self.keys.get(key) != infohash:
            return None
        return self.sessions.get(infohash)

    def end_session(self, session: Session) -> None:
        session.ended = True
        self.sessions.pop(session.infohash, None)
        for key in session.keys:
            self.keys.pop(key, None)

    # -- connections -------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections[writer] = asyncio.current_task()
        try:
            while not self.crashed:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    response = json_response({"error": str(exc)}, exc.status)
                    await send_response(writer, response, keep_alive=False, head_only=False)
                    break
                if request is None:
                    break
                if not await self._handle(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _handle(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        if request.path.startswith("/__sim/"):
            return await self._reply(request, writer, self.sim.control(self, request))
        self.requests += 1
        fault = self.fault
        if fault.mode == "hang":
            await _wait_for_client_close(reader)
            return False
        if fault.mode == "slow":
            await asyncio.sleep(fault.ms / 1000)
        if fault.mode == "error":
            return await self._reply(request, writer, json_response({"error": "simulated error"}, fault.code))
        if fault.mode == "badjson":
            return await self._reply(request, writer, Response(200, BAD_JSON))
        if request.path.startswith("/ace/r/"):
            return await self._play(request, writer)
        if request.path.startswith("/ace/c/") and fault.mode == "stall":
            await _wait_for_client_close(reader)  # a stalled engine has no segment to give
            return False
        try:
            response = self._route(request)
        except Exception as exc:  # a bug here must not kill the other engines
            log(f"engine {self.port} error on {request.path}: {exc!r}")
            response = json_response({"error": "internal error"}, 500)
        return await self._reply(request, writer, response)

    async def _reply(self, request: Request, writer: asyncio.StreamWriter, response: Response) -> bool:
        keep_alive = request.keep_alive and not response.close
        await send_response(writer, response, keep_alive, head_only=request.method == "HEAD")
        if response.after is not None:
            response.after()
        return keep_alive

    # -- engine API --------------------------------------------------------

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/server/api":
            return self._server_api(request.query.get("method"))
        if path == "/webui/api/service":
            return self._webui_service(request.query.get("method"))
        if path == "/ace/getstream":
            return self._start(request, hls=False)
        if path == "/ace/manifest.m3u8":
            return self._start(request, hls=True)
        if path.startswith("/ace/m/") and path.endswith(".m3u8"):
            infohash, key = _session_path(path[len("/ace/m/") : -len(".m3u8")])
            return self._playlist(infohash, key, request)
        if path.startswith("/ace/c/") and path.endswith(".ts"):
            key, _, sequence = path[len("/ace/c/") : -len(".ts")].partition("/")
            return self._segment(key, sequence)
        for prefix, handler in (("/ace/stat/", self._stat), ("/ace/cmd/", self._command)):
            if path.startswith(prefix):
                infohash, key = _session_path(path[len(prefix) :])
                return handler(infohash, key, request)
        return json_response({"error": "not found"}, 404)

    def _server_api(self, method: str | None) -> Response:
        if method == "get_status":
            return json_response({"result": {"playlist_loaded": True, "version": ENGINE_VERSION}})
        if method == "get_network_connection_status":
            return json_response({"result": {"connected": True}})
        return json_response({"result": None, "error": f"unknown method: {method or '(none)'}"})

    def _webui_service(self, method: str | None) -> Response:
        if method == "get_version":
            version = {**ENGINE_VERSION, "revision": ENGINE_REVISION}
            return json_response({"result": version, "error": None})
        return json_response({"result": None, "error": f"unknown method: {method or '(none)'}"})

    def _start(self, request: Request, hls: bool) -> Response:
        """getstream (MPEG-TS) or manifest.m3u8 (HLS): a player key on the content's session."""
        infohash = content_infohash(request.query)
        if infohash is None:
            return json_response({"response": None, "error": "missing content id"})
        if not infohash:
            return json_response({"response": None, "error": NO_CONTENT})
        session, key = self.open_session(infohash)
        base = f"http://{request.headers.get('host') or f'{self.host}:{self.port}'}"
        if hls:
            playback_url = f"{base}/ace/m/{infohash}/{key}.m3u8"
        else:
            playback_url = f"{base}/ace/r/{infohash}/{key}"
        if request.query.get("format") != "json":
            return Response(302, content_type="text/plain", headers={"Location": playback_url})
        return json_response(
            {
                "response": {
                    "playback_url": playback_url,
                    "stat_url": f"{base}/ace/stat/{infohash}/{key}",
                    "command_url": f"{base}/ace/cmd/{infohash}/{key}",
                    "infohash": infohash,
                    "playback_session_id": key,
                    "is_live": 1,
                    "is_encrypted": 0,
                    "client_session_id": next(self._client_session_ids),
                },
                "error": None,
            }
        )

    def _stat(self, infohash: str, key: str, request: Request) -> Response:
        session = self.find_session(infohash, key)
        if session is None:
            return dead_session()
        now = time.monotonic()
        session.last_seen = now
        body = _stat_body(session, now, self.sim.bitrate, starved=self.fault.mode == "starve")
        return json_response({"response": body, "error": None})

    def _command(self, infohash: str, key: str, request: Request) -> Response:
        session = self.find_session(infohash, key)
        if session is None:
            return dead_session()
        if request.query.get("method") != "stop":
            return json_response({"response": None, "error": "unknown method"})
        # Stop on any key ends the content session for all its players.
        self.end_session(session)
        return json_response({"response": "ok", "error": None})

    def _channel(self, session: Session) -> Channel:
        if session.channel is None:
            session.channel = self.sim.channel(session.infohash)
        return session.channel

    def _playlist(self, infohash: str, key: str, request: Request) -> Response:
        session = self.find_session(infohash, key)
        if session is None:
            return dead_session(404)
        session.last_seen = time.monotonic()
        channel = self._channel(session)
        segment_s = channel.period_s * SEGMENT_PERIODS
        current = int(sim_clock() // segment_s)  # still being filled: not listed yet
        first = current - PLAYLIST_SEGMENTS
        base = f"http://{request.headers.get('host') or f'{self.host}:{self.port}'}"
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{int(segment_s) + 1}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        for sequence in range(first, current):
            lines += [f"#EXTINF:{segment_s:.3f},", f"{base}/ace/c/{key}/{sequence}.ts"]
        body = ("\n".join(lines) + "\n").encode()
        return Response(200, body, content_type="application/vnd.apple.mpegurl")

    def _segment(self, key: str, sequence: str) -> Response:
        session = self.sessions.get(self.keys.get(key, ""))
        if session is None:
            return dead_session(404)
        number = _int_or_none(sequence)
        channel = self._channel(session)
        current = int(sim_clock() // (channel.period_s * SEGMENT_PERIODS))
        if number is None or not current - SEGMENT_HISTORY <= number < current:
            return json_response({"error": "no such segment"}, 404)
        session.last_seen = time.monotonic()
        first = number * SEGMENT_PERIODS
        body = b"".join(channel.period(n) for n in range(first, first + SEGMENT_PERIODS))
        return Response(200, body, content_type="video/mp2t")

    async def _play(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        infohash, key = _session_path(request.path[len("/ace/r/") :])
        session = self.find_session(infohash, key)
        if session is None:
            return await self._reply(request, writer, dead_session(404))
        # HTTP/1.1 gets a chunked body; HTTP/1.0 clients read until close.
        chunked = request.version == "HTTP/1.1"
        headers = {"Server": SERVER_HEADER, "Date": formatdate(usegmt=True), "Content-Type": "video/mp2t"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        headers["Connection"] = "close"
        writer.write(_head(200, headers))
        if request.method == "HEAD":
            await writer.drain()
            return False
        session.players += 1
        try:
            await self._stream_until_ended(session, writer, chunked)
        finally:
            session.players -= 1
            session.last_seen = time.monotonic()
        return False

    async def _stream_until_ended(self, session: Session, writer: asyncio.StreamWriter, chunked: bool) -> None:
        """Send the channel period by period, each once it has begun.

        It starts JOIN_BACKLOG_S behind live.  A prebuf fault holds the first
        bytes back; a stall sends nothing while it lasts and then resumes
        live, skipping what a real swarm missed.
        """
        channel = self._channel(session)
        if self.fault.mode == "prebuf":
            session.prebuf_until = max(session.prebuf_until, time.monotonic() + self.fault.s)
            await self._pause_until(session, writer, session.prebuf_until)
        backlog = math.ceil(JOIN_BACKLOG_S / channel.period_s)
        following: int | None = channel.live_period(sim_clock()) - backlog  # next period; None: join live
        while not session.ended and not writer.is_closing():
            if self.fault.mode == "stall":
                following = None
                await asyncio.sleep(FAULT_POLL_S)
                continue
            now = sim_clock()
            if following is None:
                following = channel.live_period(now)
            elif following * channel.period_s > now:
                await asyncio.sleep(min(following * channel.period_s - now, FAULT_POLL_S))
                continue
            data = channel.period(following)
            following += 1
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await writer.drain()  # raises once the player hangs up
            session.last_seen = time.monotonic()
        if chunked and not writer.is_closing():
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def _pause_until(self, session: Session, writer: asyncio.StreamWriter, until: float) -> None:
        while not session.ended and not writer.is_closing() and time.monotonic() < until:  # noqa: ASYNC110  # no event announces either
            await asyncio.sleep(min(FAULT_POLL_S, until - time.monotonic()))

    # -- /__sim/ control ---------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "fault": self.fault.as_dict(),
            "sessions": [
                {
                    "infohash": s.infohash,
                    "keys": list(s.keys),
                    "started_at": s.started_at,
                    "bytes": s.bytes,
                    "players": s.players,
                }
                for s in self.sessions.values()
            ],
            "cache_bytes": self.cache_bytes(),
            "cache_dir": self.cache_dir,
            "requests": self.requests,
        }

    def set_fault(self, fault: Fault, for_s: float | None) -> Callable[[], None] | None:
        """Record the fault now; return the part that must wait for the reply.

        refuse and crash close sockets, so they act only after the control
        request has been answered (it may have arrived on this very engine).
        """
        self._cancel_relisten()
        self.fault = fault
        log(f"engine {self.port} fault → {fault.mode}")
        if fault.mode == "refuse":
            return lambda: self.refuse(for_s)
        if fault.mode == "crash":
            return self.crash
        if not self.listening:  # leaving refuse: listen again
            self._spawn(self.resume_listening())
        return None


def _session_path(rest: str) -> tuple[str, str]:
    infohash, _, key = rest.strip("/").partition("/")
    return infohash.lower(), key


def content_infohash(query: dict[str, str]) -> str | None:
    """The session's infohash for a getstream query: None when it names no
    content, "" for content the swarm doesn't have (OFFLINE_PREFIX)."""
    given = query.get("infohash", "").strip().lower()
    if given:
        return given
    for name in ("id", "content_id", "url", "magnet"):
        key = query.get(name, "").strip()
        if not key:
            continue
        if key.lower().startswith(OFFLINE_PREFIX):
            return ""
        if name == "magnet" and "urn:btih:" in key.lower():
            btih = key.lower().split("urn:btih:", 1)[1][:40]
            if len(btih) == 40 and all(c in "0123456789abcdef" for c in btih):
                return btih
        return hashlib.sha1(key.encode()).hexdigest()
    return None


def _stat_body(session: Session, now: float, bitrate: int, starved: bool = False) -> dict[str, Any]:
    """The stat URL's figures: moving counters for a session that downloads at `bitrate`."""
    elapsed = session.elapsed(now)
    downloaded = int(elapsed * bitrate / 8)
    wall = int(time.time())
    live_first = wall - 3600  # a one-hour live window, like a typical channel
    peers = 5 + _infohash_bytes(session.infohash)[0] % 20
    speed = max(1, bitrate // 8192)  # KiB/s
    return {
        "status": "prebuf" if elapsed < PREBUF_S or now < session.prebuf_until else "dl",
        "peers": 0 if starved else peers,
        "speed_down": 0 if starved else speed + random.randint(0, 8),
        "speed_up": 0 if starved else random.randint(5, 20),
        "downloaded": downloaded,
        "uploaded": downloaded // 4,
        "livepos": {
            "pos": str(wall - 10),
            "first": str(live_first),
            "last": str(wall),
            "live_first": str(live_first),
            "live_last": str(wall),
            "first_ts": str(live_first),
            "last_ts": str(wall),
            "is_live": "1",
            "buffer_pieces": "15",
        },
    }


async def _wait_for_client_close(reader: asyncio.StreamReader) -> None:
    # "hang": keep the connection open and silent until the client gives up.
    while await reader.read(65536):
        pass


# --------------------------------------------------------------------------
# The process: many engines, one loop
# --------------------------------------------------------------------------


class ListenError(Exception):
    pass


class Simulator:
    def __init__(
        self,
        host: str,
        ports: list[int],
        cache_root: str,
        single: bool,
        bitrate: int = DEFAULT_BITRATE,
        media: MediaLoop | None = None,
    ) -> None:
        self.single = single
        self.media = media
        self.bitrate = media.bitrate if media is not None else bitrate
        # One channel per content for the whole process, alive while a session holds it.
        self._channels: weakref.WeakValueDictionary[str, Channel] = weakref.WeakValueDictionary()
        self.engines: dict[int, Engine] = {}
        for port in ports:
            cache_dir = cache_root if single else os.path.join(cache_root, str(port))
            self.engines[port] = Engine(self, host, port, cache_dir)
        self.stopped = asyncio.Event()
        self.exit_code = 0

    def channel(self, infohash: str) -> Channel:
        channel = self._channels.get(infohash)
        if channel is None:
            if self.media is not None:
                channel = MediaChannel(self.media, infohash)
            else:
                channel = SyntheticChannel(infohash, self.bitrate)
            self._channels[infohash] = channel
        return channel

    async def start(self) -> None:
        for engine in self.engines.values():
            try:
                await engine.listen()
            except OSError as exc:
                raise ListenError(f"cannot listen on {engine.host}:{engine.port}: {exc}") from None
            log(f"engine listening on {engine.host}:{engine.port} (cache {engine.cache_dir})")

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for engine in self.engines.values():
                if engine.sessions:
                    engine.tick(now)

    def engine_crashed(self, engine: Engine) -> None:
        if self.single:  # a lone engine crashing is the process dying
            self.exit_code = 1
            self.stopped.set()

    async def close(self) -> None:
        """Close every socket and let connection handlers finish on their own.

        Handlers left for asyncio.run to cancel make Python 3.11's streams
        module log a CancelledError traceback per connection.
        """
        for engine in self.engines.values():
            engine.stop_listening()
        tasks = [task for engine in self.engines.values() for task in engine.connection_tasks()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def control(self, engine: Engine, request: Request) -> Response:
        """Answer /__sim/ requests; `port=X` targets another engine here."""
        target = engine
        if "port" in request.query:
            port = _int_or_none(request.query["port"])
            if port not in self.engines:
                error = f"no engine on port {request.query['port']}"
                return json_response({"ok": False, "error": error}, 404)
            target = self.engines[port]
        if request.path == "/__sim/state":
            return json_response(target.state())
        if request.path == "/__sim/fault":
            return _set_fault(target, request.query)
        return json_response({"error": "not found"}, 404)


def _set_fault(target: Engine, query: dict[str, str]) -> Response:
    parsed = _parse_fault(query)
    if isinstance(parsed, str):
        return json_response({"ok": False, "error": parsed}, 400)
    if target.crashed:
        return json_response({"ok": False, "error": f"engine {target.port} has crashed"}, 409)
    fault, for_s = parsed
    apply_after_reply = target.set_fault(fault, for_s)
    return json_response({"ok": True, "mode": fault.mode}, after=apply_after_reply)


def _parse_fault(query: dict[str, str]) -> tuple[Fault, float | None] | str:
    """The fault and its `for_s`, or what is wrong with the query."""
    mode = query.get("mode", "")
    if mode not in FAULT_MODES:
        return f"mode must be one of {', '.join(FAULT_MODES)}"
    ms = _int_or_none(query.get("ms", str(DEFAULT_SLOW_MS)))
    if ms is None or ms < 0:
        return "ms must be a non-negative integer"
    code = _int_or_none(query.get("code", str(DEFAULT_ERROR_CODE)))
    if code is None or not 100 <= code <= 599:
        return "code must be an HTTP status (100-599)"
    for_s = _float_or_none(query["for_s"]) if "for_s" in query else None
    if "for_s" in query and for_s is None:
        return "for_s must be a non-negative number of seconds"
    seconds = _float_or_none(query.get("s", str(DEFAULT_PREBUF_FAULT_S)))
    if seconds is None:
        return "s must be a non-negative number of seconds"
    return Fault(mode, ms, code, seconds), for_s


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_port_range(text: str) -> list[int]:
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not 1 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return list(range(first, last + 1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="acesim", description="Simulated AceStream engine(s).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--port", type=int, help="run one engine on this port")
    which.add_argument("--ports", type=parse_port_range, help="run one engine per port, e.g. 20000-20999")
    which.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--cache-dir", help="cache directory (with --ports: one subdirectory per port)")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds to wait before listening")
    parser.add_argument(
        "--bitrate",
        type=parse_bitrate,
        default=DEFAULT_BITRATE,
        help=f"bits/s of each stream, e.g. 1500000, 800k or 2M (default {DEFAULT_BITRATE})",
    )
    parser.add_argument("--media", help="an MPEG-TS file every content plays in a loop (paced by its own clock)")
    return parser.parse_args(argv)


def parse_bitrate(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bits/s such as 1500000 or 1.5M, got {text!r}") from None
    if not MIN_BITRATE <= value <= 1_000_000_000:
        raise argparse.ArgumentTypeError(f"bitrate must be between {MIN_BITRATE} and 1G bits/s, got {text!r}")
    return int(value)


def load_media(path: str, fallback_bitrate: int) -> MediaLoop:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return MediaLoop(data, fallback_bitrate)
    except MediaError as exc:
        raise MediaError(f"{path}: {exc}") from None


def raise_fd_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: 1,000 engines need >1,024 fds."""
    try:
        import resource
    except ImportError:  # not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        log(f"warning: open-file limit {soft} is low for {needed} listening sockets")


async def run(args: argparse.Namespace, cache_root: str, media: MediaLoop | None = None) -> int:
    ports = [args.port] if args.port is not None else args.ports
    sim = Simulator(args.host, ports, cache_root, single=args.port is not None, bitrate=args.bitrate, media=media)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sim.stopped.set)
    if args.startup_delay > 0:  # a signal during the delay still exits cleanly
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sim.stopped.wait(), args.startup_delay)
    if sim.stopped.is_set():
        return 0
    ticker = asyncio.create_task(sim.tick_forever())
    try:
        await sim.start()
        await sim.stopped.wait()
    finally:
        ticker.cancel()
        await sim.close()
    return sim.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        print(f"acesim {SIM_VERSION} (engine {ENGINE_VERSION['version']})")
        return 0
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"acesim: bad port {args.port}", file=sys.stderr)
        return 2
    try:
        media = load_media(args.media, args.bitrate) if args.media else None
    except MediaError as exc:
        log(str(exc))
        return 2
    if media is not None:
        log(f"media {args.media}: {media.count} packets, {media.bitrate} bits/s, looped")
    raise_fd_limit(len(args.ports or [args.port]) + 64)
    temp_cache = args.cache_dir is None
    cache_root = tempfile.mkdtemp(prefix="acesim-") if temp_cache else args.cache_dir
    try:
        return asyncio.run(run(args, cache_root, media))
    except ListenError as exc:
        log(str(exc))
        return 1
    finally:
        if temp_cache:  # our own scratch space; a given --cache-dir is kept
            shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
