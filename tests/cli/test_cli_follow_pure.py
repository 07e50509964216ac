"""`aceorch engines --watch` frames and `aceorch events` lines, without I/O."""

from datetime import UTC, datetime

from services.cli.follow import REDRAW, event_line, frame


def test_a_frame_redraws_from_the_top_and_says_when():
    at = datetime(2026, 1, 1, 9, 5, 7, tzinfo=UTC)
    assert frame("TABLE", at, 2.0) == f"{REDRAW}engines at 09:05:07 (every 2s; Ctrl-C to stop)\n\nTABLE\n"
    assert REDRAW == "\x1b[H\x1b[J"


def test_an_event_line_has_local_time_a_level_marker_and_the_text():
    at = datetime(2026, 1, 1, 9, 5, 7, tzinfo=UTC)
    local = f"{at.astimezone():%H:%M:%S}"
    for level, marker in (("error", "!"), ("warning", "~"), ("info", " ")):
        event = {"at": at.isoformat(), "level": level, "text": "acestream-3 unhealthy"}
        assert event_line(event) == f"{local} {marker} acestream-3 unhealthy"


def test_an_event_line_survives_a_bad_time():
    assert event_line({"at": "soon", "text": "x"}) == "--:--:--   x"
