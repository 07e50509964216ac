"""What comes in and goes out of the proxy, parsed without I/O: viewer queries, engine replies.

Everything here raises `WireError(status, message)` with a message that names
the problem; the HTTP layer turns it into `{"error": ..., "code": N}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, urljoin, urlsplit

import msgspec

from shared.schemas import KeyType, PlaybackStats

MAX_QUERY = 4096  # a magnet with trackers fits; more is hostile
CONTENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INFOHASH = re.compile(r"[0-9a-fA-F]{40}")
# Viewer parameter → key type, in acexy's spelling.
KEY_PARAMS: dict[str, KeyType] = {
    "id": "content_id",
    "content_id": "content_id",
    "infohash": "infohash",
    "url": "url",
    "magnet": "magnet",
}
DEAD_SESSION = "unknown playback session id"  # the engine's answer for a session it does not know


class WireError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Content:
    key: str
    key_type: KeyType

    @property
    def label(self) -> str:
        return f"{self.key_type}={self.key[:60]}"


def parse_query(query: str) -> dict[str, str]:
    if len(query) > MAX_QUERY:
        raise WireError(414, f"query string of {len(query)} bytes is over the limit of {MAX_QUERY}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except ValueError as exc:
        raise WireError(400, f"bad query string: {exc}") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        found.setdefault(name, value)
    return found


def content_of(params: dict[str, str]) -> Content:
    """The one content a getstream/manifest request names (id, content_id, infohash, url or magnet)."""
    given = [(name, params[name]) for name in KEY_PARAMS if name in params]
    if not given:
        raise WireError(400, "name the content: id=, content_id=, infohash=, url= or magnet=")
    if len({KEY_PARAMS[name] for name, _ in given}) > 1:
        raise WireError(400, f"name the content once, got {', '.join(name for name, _ in given)}")
    name, value = given[0]
    key_type = KEY_PARAMS[name]
    if key_type == "content_id" and not CONTENT_ID.fullmatch(value):
        raise WireError(400, f"{name} must be 1-128 letters, digits, '.', '_' or '-', got {value[:80]!r}")
    if key_type == "infohash" and not INFOHASH.fullmatch(value):
        raise WireError(400, f"infohash must be 40 hex digits, got {value[:80]!r}")
    if key_type == "url" and not re.fullmatch(r"https?://\S+", value):
        raise WireError(400, f"url must be an http(s) URL, got {value[:80]!r}")
    if key_type == "magnet" and not value.startswith("magnet:?"):
        raise WireError(400, f"magnet must start with 'magnet:?', got {value[:80]!r}")
    return Content(value.lower() if key_type == "infohash" else value, key_type)


# ---------------------------------------------------------------- engine replies


class EngineSession(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's answer to getstream?format=json (its `response` object)."""

    playback_url: str
    stat_url: str | None = None
    command_url: str | None = None
    playback_session_id: str | None = None
    is_live: int | bool | None = None


class _SessionReply(msgspec.Struct):
    response: EngineSession | None = None
    error: str | None = None


class _RawStats(msgspec.Struct):
    status: str | None = None
    peers: int | None = None
    speed_down: int | None = None
    speedDown: int | None = None
    speed_up: int | None = None
    speedUp: int | None = None
    downloaded: int | None = None
    uploaded: int | None = None
    livepos: dict[str, int | float | str | None] | None = None


class _StatReply(msgspec.Struct):
    response: _RawStats | None = None
    error: str | None = None


_decode_session = msgspec.json.Decoder(_SessionReply).decode
_decode_stat = msgspec.json.Decoder(_StatReply).decode


def session_of(status: int, body: bytes) -> EngineSession:
    """The playback session from a getstream reply; WireError 404 when the engine refused the content,
    502 when the reply makes no sense."""
    try:
        reply = _decode_session(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(502, f"engine answered getstream with HTTP {status} and an unreadable body ({exc})") from None
    if reply.error or reply.response is None:
        raise WireError(404, f"engine refused the content: {reply.error or 'no session in its reply'}")
    if status != 200:
        raise WireError(502, f"engine answered getstream with HTTP {status}")
    return reply.response


class SessionGone(Exception):
    """The stat URL no longer knows the session."""


def stats_of(body: bytes, now: datetime) -> PlaybackStats:
    """PlaybackStats from a stat reply (speed_down or speedDown, ...); SessionGone for a dead session,
    WireError 502 for anything unreadable."""
    try:
        reply = _decode_stat(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(502, f"unreadable stat reply ({exc})") from None
    if reply.error:
        if DEAD_SESSION in reply.error.lower():
            raise SessionGone(reply.error)
        raise WireError(502, f"engine stat error: {reply.error[:200]}")
    raw = reply.response
    if raw is None:
        raise WireError(502, "stat reply without a response")
    try:
        return msgspec.convert(
            {
                "status": raw.status,
                "peers": raw.peers,
                "speed_down": raw.speed_down if raw.speed_down is not None else raw.speedDown,
                "speed_up": raw.speed_up if raw.speed_up is not None else raw.speedUp,
                "downloaded": raw.downloaded,
                "uploaded": raw.uploaded,
                "livepos": raw.livepos,
                "reported_at": now,
            },
            PlaybackStats,
        )
    except msgspec.ValidationError as exc:
        raise WireError(502, f"stat figures out of range ({exc})") from None


# ---------------------------------------------------------------- HLS playlists

MAX_PLAYLIST_BYTES = 256 * 1024  # a live playlist lists a handful of segments in a few hundred bytes
MAX_PLAYLIST_SEGMENTS = 512


def playlist_text(body: bytes) -> str:
    """An engine's playlist as text; WireError 502 unless it is a UTF-8 media playlist (#EXTM3U first)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WireError(502, "the engine's playlist is not UTF-8") from None
    if not text.lstrip().startswith("#EXTM3U"):
        raise WireError(502, "the engine's playlist does not start with #EXTM3U")
    return text


def segment_uris(text: str, playlist_url: str) -> list[str]:
    """The absolute http(s) URL of every segment `text` lists, in order (relative URIs are resolved
    against `playlist_url`); WireError 502 for a master playlist, too many segments or another scheme."""
    found = [absolute for _, absolute in _segment_lines(text.splitlines(), playlist_url)]
    if len(found) > MAX_PLAYLIST_SEGMENTS:
        raise WireError(502, f"the engine's playlist lists {len(found)} segments, over {MAX_PLAYLIST_SEGMENTS}")
    return found


def rewrite_playlist(text: str, playlist_url: str, names: Mapping[str, str]) -> str:
    """`text` with each segment URI replaced by `names[its absolute URL]`; tags, comments and blank
    lines kept as they are. Every segment must have a name (KeyError otherwise: a caller's bug)."""
    lines = text.splitlines()
    for index, absolute in _segment_lines(lines, playlist_url):
        lines[index] = names[absolute]
    return "\n".join(lines) + "\n"


def target_duration(text: str) -> float | None:
    """#EXT-X-TARGETDURATION in seconds, None when absent or not a positive number."""
    for line in text.splitlines():
        if line.startswith("#EXT-X-TARGETDURATION:"):
            try:
                value = float(line.partition(":")[2].strip())
            except ValueError:
                return None
            return value if 0 < value < float("inf") else None
    return None


def _segment_lines(lines: list[str], playlist_url: str) -> list[tuple[int, str]]:
    """(line index, absolute URL) of every URI line: a non-blank line that is not a tag or comment."""
    found = []
    for index, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF"):
            raise WireError(502, "the engine answered a master playlist (variant streams): not supported")
        uri = line.strip()
        if not uri or uri.startswith("#"):
            continue
        absolute = urljoin(playlist_url, uri)
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise WireError(502, f"the engine's playlist names a segment that is not http(s): {uri[:80]!r}")
        found.append((index, absolute))
    return found
