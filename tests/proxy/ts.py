"""Reading MPEG-TS in tests: continuity per PID, the independent check that no packet was lost or reordered."""

from __future__ import annotations

PACKET = 188


def continuity_breaks(data: bytes) -> int:
    """Packets whose continuity counter does not follow the previous one of their PID (payload packets only)."""
    last: dict[int, int] = {}
    breaks = 0
    for offset in range(0, len(data) - len(data) % PACKET, PACKET):
        head = data[offset : offset + 4]
        assert head[0] == 0x47, f"no sync byte at {offset}"
        pid = ((head[1] & 0x1F) << 8) | head[2]
        if not head[3] & 0x10 or pid == 0x1FFF:
            continue
        counter = head[3] & 0x0F
        if pid in last and counter != (last[pid] + 1) % 16:
            breaks += 1
        last[pid] = counter
    return breaks
