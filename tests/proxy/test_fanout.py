"""The channel buffer and TS alignment, without I/O."""

from __future__ import annotations

import pytest

from services.proxy.fanout import PACKET, Aligner, FanoutBuffer, Lagged, pat_offsets


def packet(pid: int, counter: int = 0, start: bool = False, fill: int = 0xFF) -> bytes:
    return (
        bytes((0x47, (0x40 if start else 0) | (pid >> 8) & 0x1F, pid & 0xFF, 0x10 | counter & 0x0F))
        + bytes([fill]) * 184
    )


def packets(count: int, pid: int = 0x100) -> bytes:
    return b"".join(packet(pid, i) for i in range(count))


# ------------------------------------------------------------------ Aligner


def test_aligner_passes_whole_packets_and_carries_the_rest():
    aligner = Aligner()
    data = packets(5)
    assert aligner.feed(data[:400]) == data[:376]
    assert aligner.feed(data[400:]) == data[376:]
    assert aligner.skipped == 0


def test_aligner_skips_garbage_before_the_first_proven_boundary():
    aligner = Aligner()
    data = b"\x00\x47junk" + packets(4)
    assert aligner.feed(data) == packets(4)
    assert aligner.skipped == 6


def test_aligner_waits_for_three_sync_bytes_before_trusting_a_boundary():
    aligner = Aligner()
    data = packets(3)
    assert aligner.feed(data[: PACKET * 2]) == b""  # two sync bytes prove nothing yet
    assert aligner.feed(data[PACKET * 2 :]) == data


def test_aligner_resyncs_after_a_lost_packet_boundary():
    aligner = Aligner()
    good = packets(2)
    broken = packet(0x100)[:100]  # a cut packet
    after = packets(4)
    out = aligner.feed(good + broken + after)
    assert out[: len(good)] == good
    assert out[len(good) :] == after
    assert len(out) % PACKET == 0


def test_aligner_reset_drops_a_partial_packet_of_the_old_source():
    aligner = Aligner()
    aligner.feed(packets(3) + packet(0x100)[:50])
    aligner.reset()
    assert aligner.feed(packets(3, pid=0x200)) == packets(3, pid=0x200)


# ------------------------------------------------------------------ FanoutBuffer


def test_buffer_keeps_at_most_its_capacity_plus_one_chunk():
    buffer = FanoutBuffer(capacity=PACKET * 10)
    for _ in range(50):
        buffer.append(packets(4))
    assert buffer.size <= PACKET * 10 + PACKET * 4
    assert buffer.end == 50 * 4 * PACKET
    assert buffer.start == buffer.end - buffer.size


def test_a_reader_gets_every_byte_in_order_from_its_cursor():
    buffer = FanoutBuffer(capacity=PACKET * 100)
    stream = b"".join(packet(0x100, i) for i in range(40))
    for i in range(0, len(stream), PACKET * 4):
        buffer.append(stream[i : i + PACKET * 4])
    got = b""
    cursor = PACKET * 3 + 10  # mid-chunk, even mid-packet: read returns exactly from there
    while cursor < buffer.end:
        part = buffer.read(cursor, PACKET * 5)
        got += part
        cursor += len(part)
    assert got == stream[PACKET * 3 + 10 :]


def test_a_reader_behind_the_buffer_lags():
    buffer = FanoutBuffer(capacity=PACKET * 4)
    for _ in range(5):
        buffer.append(packets(4))
    with pytest.raises(Lagged):
        buffer.read(0, 1024)
    assert buffer.read(buffer.end, 1024) == b""


def test_a_late_joiner_starts_at_the_newest_pat_held():
    buffer = FanoutBuffer(capacity=PACKET * 100)
    buffer.append(packet(0, start=True) + packets(3))
    buffer.append(packets(2) + packet(0, start=True) + packets(1))
    assert buffer.join_offset() == PACKET * 4 + PACKET * 2
    assert buffer.read(buffer.join_offset(), PACKET)[:3] == b"\x47\x40\x00"


def test_without_a_pat_a_late_joiner_starts_at_the_newest_chunk():
    buffer = FanoutBuffer(capacity=PACKET * 100)
    buffer.append(packets(3))
    buffer.append(packets(2))
    assert buffer.join_offset() == PACKET * 3
    assert FanoutBuffer(PACKET).join_offset() == 0


def test_pats_evicted_with_their_chunk_are_no_join_point():
    buffer = FanoutBuffer(capacity=PACKET * 4)
    buffer.append(packet(0, start=True) + packets(3))
    buffer.append(packets(4))
    assert buffer.start == PACKET * 4
    assert buffer.join_offset() == PACKET * 4


def test_pat_offsets_only_counts_aligned_pat_headers():
    payload_lookalike = packet(0x100, fill=0x47)[:10] + b"\x47\x40\x00" + packet(0x100)[13:]
    data = payload_lookalike + packet(0, start=True) + packet(0)
    assert pat_offsets(data) == [PACKET]
