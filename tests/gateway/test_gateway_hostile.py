"""Hostile HTTP input: every bad request gets a 4xx JSON error naming the problem, never a 500."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest
from support import free_port

HUGE = b'{"content_key": "' + b"a" * 70_000 + b'"}'
# (method, path, raw body, expected status, text the error must contain)
BAD_BODIES = [
    ("POST", "/engines/select", b"{bad", 400, "body is not valid JSON"),
    ("POST", "/engines/select", b'{"content_key": "\xff\xfe"}', 400, "body is not valid UTF-8"),
    (
        "POST",
        "/engines/select",
        b"[" * 20_000 + b"]" * 20_000,
        400,
        "body is not valid JSON: nested deeper than the decoder's depth limit",
    ),
    ("POST", "/engines/select", b'{"content_key": 5}', 422, "invalid body: field `$.content_key`: expected a string"),
    ("POST", "/engines/select", b'{"content_id": "x"}', 422, "field `$.content_id` is not accepted"),
    ("POST", "/engines/select", b"[1, 2]", 422, "invalid body: expected an object"),
    (
        "POST",
        "/engines/select",
        b'{"key_type": "torrent"}',
        422,
        "field `$.key_type`: expected one of 'content_id', 'infohash', 'magnet', 'url'",
    ),
    ("POST", "/engines/select", HUGE, 413, "MAX_BODY_BYTES"),
    (
        "POST",
        "/engines",
        b'{"host": "127.0.0.1", "port": 70000}',
        422,
        "field `$.port`: expected an integer from 1 to 65535",
    ),
    (
        "POST",
        "/engines",
        b'{"host": "127.0.0.1", "port": 1e400}',
        400,
        "field `$.port`: expected an integer from 1 to 65535",
    ),
    ("POST", "/engines", b'{"host": "<img src=x>", "port": 6878}', 422, "field `$.host`: expected a string"),
    ("POST", "/engines", b'{"host": "127.0.0.1", "port": "6878"}', 422, "field `$.port`: expected an integer"),
    ("POST", "/engines", b'{"port": 6878}', 422, "field `$.host` is required"),
    (
        "POST",
        "/engines",
        b'{"host": "h", "port": 6878, "container_id": "a b"}',
        422,
        "field `$.container_id`: expected a string",
    ),
    ("POST", "/engines", b'{"host": "h", "port": 6878, "runtime": "docker"}', 422, "field `$.runtime` is not accepted"),
    ("POST", "/events/stream_started", b"", 422, "body is required"),
    ("POST", "/events/stream_started", b"null", 422, "invalid body: expected an object"),
    ("POST", "/events/stream_started", b'{"engine": {"host": "h"}}', 422, "field `$.engine.port` is required"),
    ("POST", "/events/stream_started", b'{"stream_id": "s1"}', 422, "needs container_id"),
    ("POST", "/events/stream_started", b'{"container_id": "nope"}', 404, "engine nope not found"),
    (
        "POST",
        "/events/stream_started",
        b'{"stream": {"key_type": "x", "key": "k"}}',
        422,
        "field `$.stream.key_type`: expected one of",
    ),
    (
        "POST",
        "/events/stream_started",
        b'{"session": {"is_live": "yes"}}',
        422,
        "field `$.session.is_live`: expected true or false",
    ),
    ("POST", "/events/stream_started", b'{"labels": {"a": 1}}', 422, "field `$.labels[...]`: expected a string"),
    ("POST", "/events/stream_ended", b"{}", 422, "needs stream_id"),
    ("POST", "/events/stream_ended", b'{"stream_id": 1}', 422, "field `$.stream_id`: expected a string"),
    (
        "POST",
        "/events/stream_ended",
        b'{"stream_id": "s", "ended_at": "yesterday"}',
        422,
        "field `$.ended_at`: expected an RFC 3339 date-time with a timezone",
    ),
    (
        "POST",
        "/events/stream_ended",
        b'{"stream_id": "s", "ended_at": 0}',
        422,
        "field `$.ended_at`: expected an RFC 3339 date-time",
    ),
    (
        "POST",
        "/events/stream_started",
        b'{"container_id": "c", "is_live": "true"}',
        422,
        "field `$.is_live`: expected true or false",
    ),
    (
        "POST",
        "/events/stream_ended",
        b'{"stream_id": "s", "ended_at": "2024-01-01T00:00:00"}',
        422,
        "field `$.ended_at`: expected an RFC 3339 date-time with a timezone",
    ),
    ("POST", "/events/stream_ended", b'{"container_id": "nope"}', 404, "nope"),
]
BAD_REQUESTS = [
    ("GET", "/engines?health_status=purple", 400, "health_status"),
    ("GET", "/engines?state=melting", 400, "parameter state"),
    ("GET", "/streams?status=playing", 400, "status"),
    ("GET", "/engines/%00", 404, "not found"),
    ("GET", "/engines/..%2F..%2Fetc%2Fpasswd", 404, ""),
    ("GET", "/engines/" + "x" * 8000, 404, "not found"),
    ("GET", "/static/../../../../etc/passwd", 404, ""),
    ("GET", "/static/%2e%2e/%2e%2e/app.py", 404, ""),
    ("GET", "/no/such/path", 404, "no such resource"),
    ("PATCH", "/engines", 405, "PATCH is not allowed"),
    ("DELETE", "/engines", 405, "not allowed"),
    ("PUT", "/events/stream_started", 405, "not allowed"),
]


async def test_bad_bodies_get_a_json_error_naming_the_problem(stack):
    for method, path, body, status, needle in BAD_BODIES:
        reply = await stack.http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        _assert_error(reply, status, needle, f"{method} {path} {body[:60]!r}")
    await _assert_still_healthy(stack)


async def test_bad_paths_queries_and_methods_get_json_errors(stack):
    for method, path, status, needle in BAD_REQUESTS:
        reply = await stack.http.request(method, path)
        _assert_error(reply, status, needle, f"{method} {path[:80]}")
    await _assert_still_healthy(stack)


async def test_streamed_bodies_over_the_limit_are_refused(stack):
    async def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(100):
            yield b" " * 1024

    reply = await stack.http.post("/engines/select", content=chunks(), headers={"Content-Type": "application/json"})
    _assert_error(reply, 413, "MAX_BODY_BYTES", "chunked 100 KiB body")
    await _assert_still_healthy(stack)


async def test_garbage_on_the_socket_does_not_hurt_the_gateway(stack):
    port = int(stack.url.rsplit(":", 1)[1])
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
        b"NOT-HTTP\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(garbage)
            try:
                answer = sock.recv(64)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 5"), answer
    await _assert_still_healthy(stack)


async def test_gateway_refuses_to_start_on_a_port_in_use(stack, processes):
    busy = int(stack.url.rsplit(":", 1)[1])
    proc = processes.service("gateway", {**stack.env, "GATEWAY_PORT": str(busy)})
    assert proc.popen.wait(20) == 1
    assert f"gateway could not listen on 127.0.0.1:{busy}" in proc.log()
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize(
    "value, message", [("0", "GATEWAY_PORT must be >= 1"), ("http", "GATEWAY_PORT must be an integer")]
)
async def test_invalid_gateway_configuration_names_the_variable(processes, value, message):
    proc = processes.start(
        "gateway",
        [sys.executable, "-m", "services.gateway"],
        {"GATEWAY_PORT": value, "NATS_URL": f"nats://127.0.0.1:{free_port()}"},
    )
    assert proc.popen.wait(20) == 2
    assert message in proc.log()


def _assert_error(reply: httpx.Response, status: int, needle: str, what: str) -> None:
    assert reply.status_code == status, f"{what}: {reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"].startswith("application/json"), what
    body = reply.json()
    assert body["code"] == status and isinstance(body["error"], str) and body["error"], what
    assert needle in body["error"], f"{what}: {body['error']!r} does not mention {needle!r}"
    assert "Traceback" not in body["error"] and "litestar" not in body["error"].lower(), what


async def _assert_still_healthy(stack) -> None:
    assert (await stack.http.get("/healthz")).status_code == 200
    assert (await stack.http.get("/engines")).status_code == 200
    assert stack.gateway.alive()
    assert "Traceback" not in stack.gateway.log(), stack.gateway.log()[-3000:]
