"""An MPEG-TS reader of the tests' own (not acesim's code) and a raw playback client.

The client speaks HTTP/1.0, so acesim sends the body unframed until it closes:
what arrives is the transport stream itself, and a read timeout on the
socket says "nothing arrived" without ending the connection.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

TS = 188
NULL_PID = 0x1FFF


def packets(data: bytes) -> list[bytes]:
    assert len(data) >= TS, f"only {len(data)} bytes"
    whole = data[: len(data) - len(data) % TS]
    split = [whole[at : at + TS] for at in range(0, len(whole), TS)]
    assert all(packet[0] == 0x47 for packet in split), "lost 188-byte packet sync"
    return split


def pid_of(packet: bytes) -> int:
    return (packet[1] & 0x1F) << 8 | packet[2]


def continuity_breaks(data: bytes) -> list[tuple[int, int, int, int]]:
    """(packet index, pid, expected, got) wherever a PID's counter does not step by one."""
    last: dict[int, int] = {}
    breaks = []
    for index, packet in enumerate(packets(data)):
        pid = pid_of(packet)
        if pid == NULL_PID or not packet[3] & 0x10:  # no payload: the counter stays
            continue
        cc = packet[3] & 0x0F
        if pid in last and cc != (last[pid] + 1) % 16:
            breaks.append((index, pid, (last[pid] + 1) % 16, cc))
        last[pid] = cc
    return breaks


def pcrs(data: bytes, pid: int) -> list[tuple[int, int]]:
    """(packet index, PCR in 27 MHz ticks) of every PCR on `pid`."""
    found = []
    for index, packet in enumerate(packets(data)):
        if pid_of(packet) == pid and packet[3] & 0x20 and packet[4] >= 7 and packet[5] & 0x10:
            value = int.from_bytes(packet[6:12], "big")
            found.append((index, (value >> 15) * 300 + (value & 0x1FF)))
    return found


def _section(packet: bytes) -> bytes:
    assert packet[1] & 0x40, "PSI packet without payload_unit_start"
    start = 4 + 1 + packet[4]  # skip the pointer field
    length = ((packet[start + 1] & 0x0F) << 8) | packet[start + 2]
    return packet[start : start + 3 + length]


@dataclass
class Program:
    pmt_pid: int
    pcr_pid: int
    streams: dict[int, int]  # pid → stream_type


def program(data: bytes) -> Program:
    """The first program announced by the stream's PAT and its PMT."""
    split = packets(data)
    pat = next(_section(p) for p in split if pid_of(p) == 0 and p[1] & 0x40)
    assert pat[0] == 0x00
    pmt_pid = ((pat[10] & 0x1F) << 8) | pat[11]
    pmt = next(_section(p) for p in split if pid_of(p) == pmt_pid and p[1] & 0x40)
    assert pmt[0] == 0x02
    pcr_pid = ((pmt[8] & 0x1F) << 8) | pmt[9]
    info_length = ((pmt[10] & 0x0F) << 8) | pmt[11]
    at, end = 12 + info_length, len(pmt) - 4
    streams = {}
    while at < end:
        streams[((pmt[at + 1] & 0x1F) << 8) | pmt[at + 2]] = pmt[at]
        at += 5 + (((pmt[at + 3] & 0x0F) << 8) | pmt[at + 4])
    return Program(pmt_pid, pcr_pid, streams)


class RawPlayer:
    """GET a playback URL over HTTP/1.0 and read the raw body."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed before the response head: {head!r}"
            head += chunk
        self.head, self.pending = head.split(b"\r\n\r\n", 1)
        self.status = int(self.head.split(b" ", 2)[1])

    def recv(self, timeout_s: float) -> bytes | None:
        """Bytes that arrived (b"" once the engine closed), or None after `timeout_s` of silence."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1 << 16)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""

    def read(self, count: int, timeout_s: float = 10.0) -> bytes:
        """At least `count` bytes (fails if they don't come within `timeout_s`)."""
        data = bytearray()
        deadline = time.monotonic() + timeout_s
        while len(data) < count:
            chunk = self.recv(max(0.01, deadline - time.monotonic()))
            assert chunk, f"got {len(data)} of {count} bytes, then {'silence' if chunk is None else 'EOF'}"
            data += chunk
        return bytes(data)

    def read_for(self, seconds: float) -> bytes:
        data = bytearray()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            chunk = self.recv(left)
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPlayer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
