"""One channel's bytes for many viewers: MPEG-TS packet alignment and a bounded shared buffer.

No I/O here. The channel feeds upstream bytes through an `Aligner` (whole
188-byte packets only, re-synchronised on the 0x47 sync byte after a gap or a
new upstream) into a `FanoutBuffer`: the last `capacity` bytes, addressed by
absolute offsets that only grow. Every viewer holds a cursor (an absolute
offset); one copy of the bytes serves all of them, so memory per channel is
bounded whatever the viewer count. A viewer whose cursor fell below the
oldest byte kept has lost data: `Lagged`, and it is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

PACKET = 188
SYNC = 0x47
SYNC_CHECK = 3  # consecutive sync bytes that prove a packet boundary


class Lagged(Exception):
    """The cursor points at bytes the buffer no longer holds."""


def _synced_at(data: bytes, start: int) -> bool:
    return all(data[start + i * PACKET] == SYNC for i in range(SYNC_CHECK))


def _aligned(data: bytes) -> bool:
    """Every packet of `data` (a whole number of packets) starts with the sync byte."""
    heads = data[::PACKET]
    return heads.count(SYNC) == len(heads)


class Aligner:
    """Upstream bytes in any sizes → whole TS packets, each starting at a sync byte.

    Bytes before the first proven boundary (and after a lost sync) are skipped
    and counted in `skipped`. `reset()` forgets a partial packet: call it when
    the upstream changes (failover), so packets of two sources never mix.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._synced = False
        self.skipped = 0

    def reset(self) -> None:
        self.skipped += len(self._carry)
        self._carry = b""
        self._synced = False

    def feed(self, data: bytes) -> bytes:
        data = self._carry + data if self._carry else data
        if not self._synced:
            data = self._sync(data)
            if not self._synced:
                return b""
        whole = len(data) - len(data) % PACKET
        packets, self._carry = data[:whole], data[whole:]
        if packets and not _aligned(packets):
            # The packet before the first bad head is the one that was cut short: drop it too.
            good = max(0, self._good_prefix(packets) - PACKET)
            self._synced = False
            self._carry = b""
            rest = self.feed(packets[good:] + data[whole:])  # re-sync on what follows
            return packets[:good] + rest
        return packets

    def _sync(self, data: bytes) -> bytes:
        """`data` from its first proven boundary on (sets `_synced`), or the undecided tail kept as carry."""
        need = PACKET * (SYNC_CHECK - 1) + 1
        start = data.find(SYNC)
        while start != -1 and len(data) - start >= need:
            if _synced_at(data, start):
                self.skipped += start
                self._synced = True
                return data[start:]
            start = data.find(SYNC, start + 1)
        if start == -1:
            self.skipped += len(data)
            self._carry = b""
        else:
            self.skipped += start
            self._carry = data[start:]
        return b""

    @staticmethod
    def _good_prefix(packets: bytes) -> int:
        for offset in range(0, len(packets), PACKET):
            if packets[offset] != SYNC:
                return offset
        return len(packets)


def pat_offsets(packets: bytes) -> list[int]:
    """Offsets (within `packets`, whole aligned packets) of PAT packets starting a section (PID 0, PUSI set)."""
    found = []
    at = packets.find(b"\x47\x40\x00")
    while at != -1:
        if at % PACKET == 0:
            found.append(at)
        at = packets.find(b"\x47\x40\x00", at + 1)
    return found


class FanoutBuffer:
    """The newest `capacity` bytes of a channel (whole packets), addressed by absolute offsets.

    A chunk larger than `capacity` is still kept whole (the newest chunk always
    is), so memory is at most `capacity` + one chunk.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[tuple[int, bytes]] = deque()  # (absolute offset, bytes), oldest first
        self._size = 0
        self._pats: deque[int] = deque()  # absolute offsets of PAT packets still held
        self.start = 0  # absolute offset of the oldest byte held
        self.end = 0  # absolute offset just past the newest byte

    @property
    def size(self) -> int:
        return self._size

    def append(self, packets: bytes) -> None:
        if not packets:
            return
        self._pats.extend(self.end + at for at in pat_offsets(packets))
        self._chunks.append((self.end, packets))
        self.end += len(packets)
        self._size += len(packets)
        while self._size > self.capacity and len(self._chunks) > 1:
            offset, oldest = self._chunks.popleft()
            self._size -= len(oldest)
            self.start = offset + len(oldest)
        while self._pats and self._pats[0] < self.start:
            self._pats.popleft()

    def join_offset(self) -> int:
        """Where a new viewer starts: the newest PAT held, else the newest chunk (a packet boundary)."""
        if self._pats:
            return self._pats[-1]
        if self._chunks:
            return self._chunks[-1][0]
        return self.end

    def read(self, cursor: int, limit: int) -> bytes:
        """Up to about `limit` bytes from `cursor` (at least one chunk's rest when any is there).

        Raises Lagged when `cursor` is older than what the buffer holds.
        """
        if cursor < self.start:
            raise Lagged(f"cursor {cursor} is {self.start - cursor} bytes behind the buffer")
        if cursor >= self.end:
            return b""
        index = len(self._chunks) - 1
        while self._chunks[index][0] > cursor:  # viewers are mostly near the end: scan from there
            index -= 1
        parts: list[bytes] = []
        taken = 0
        for offset, chunk in _from(self._chunks, index):
            part = chunk[cursor + taken - offset :] if not parts else chunk
            parts.append(part)
            taken += len(part)
            if taken >= limit:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _from(chunks: deque[tuple[int, bytes]], index: int) -> Iterator[tuple[int, bytes]]:
    for i in range(index, len(chunks)):
        yield chunks[i]
