"""Cross-site writes and DNS rebinding, without API_KEY (the default): refused by a real gateway.

A page in the operator's browser can send a `text/plain` POST to
127.0.0.1:8000 without a CORS preflight; a rebound DNS name reaches the
gateway under the attacker's `Host`. Both must be refused with our JSON error,
while ordinary clients (JSON bodies, no Origin) keep working.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright
from support import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_a_text_plain_post_registers_nothing(stack):
    body = json.dumps({"host": "127.0.0.1", "port": free_port()})
    for headers in (
        {"Content-Type": "text/plain;charset=UTF-8"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
    ):
        reply = await stack.http.post("/engines", content=body, headers=headers)
        _assert_refused(reply, 415, "application/json")
    reply = await stack.http.post("/engines/select", content=b"", headers={"Content-Type": "text/plain"})
    _assert_refused(reply, 415, "application/json")
    assert (await stack.http.get("/engines")).json() == []
    assert 'aceorch_gateway_browser_refused_total{status="415"} 4.0' in (await stack.http.get("/metrics")).text


async def test_a_foreign_host_name_is_refused_on_reads_and_writes(stack):
    rebound = {"Host": "attacker.example:8000"}
    _assert_refused(await stack.http.get("/engines", headers=rebound), 421, "attacker.example")
    _assert_refused(await stack.http.get("/api/live", headers=rebound), 421, "GATEWAY_ALLOWED_HOSTS")
    reply = await stack.http.post("/engines", json={"host": "127.0.0.1", "port": free_port()}, headers=rebound)
    _assert_refused(reply, 421, "attacker.example")
    assert (await stack.http.get("/engines")).json() == []
    port = stack.url.rsplit(":", 1)[1]
    for ours in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert (await stack.http.get("/engines", headers={"Host": ours})).status_code == 200, ours


async def test_a_write_from_another_origin_is_refused_and_our_own_origin_passes(stack):
    body = {"host": "127.0.0.1", "port": free_port()}
    for origin in ("http://127.0.0.2:8000", "http://attacker.example", "null"):
        reply = await stack.http.post("/engines", json=body, headers={"Origin": origin})
        _assert_refused(reply, 403, "cross-origin")
    assert (await stack.http.get("/engines")).json() == []
    own = await stack.http.post("/engines", json=body, headers={"Origin": stack.url})
    assert own.status_code == 202, own.text


async def test_configured_host_names_are_accepted_and_star_accepts_any(stack):
    port = stack.url.rsplit(":", 1)[1]
    url, _ = await stack.start_gateway(GATEWAY_ALLOWED_HOSTS="orch.example,127.0.0.1")
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/engines", headers={"Host": "orch.example"})).status_code == 200
        _assert_refused(await http.get("/engines", headers={"Host": f"localhost:{port}"}), 421, "localhost")
    url, _ = await stack.start_gateway(GATEWAY_ALLOWED_HOSTS="*")
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/engines", headers={"Host": "anything.example"})).status_code == 200


@pytest.mark.browser
async def test_a_page_of_another_loopback_origin_cannot_register_an_engine(stack):
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    target = {"host": "127.0.0.1", "port": free_port()}
    script = f"""
        fetch({json.dumps(stack.url + "/engines")}, {{
            method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(json.dumps(target))},
        }}).then((r) => {{ window.__sent = r.type; }}, (e) => {{ window.__sent = "failed: " + e; }});
    """
    with _serve_page("127.0.0.2", f"<!doctype html><title>elsewhere</title><script>{script}</script>") as page_url:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(page_url)
                await page.wait_for_function("window.__sent !== undefined", timeout=30_000)
                sent = await page.evaluate("window.__sent")
            finally:
                await browser.close()
    assert sent == "opaque", (
        sent
    )  # the browser did send it (no preflight); the gateway's answer is hidden from the page
    assert (await stack.http.get("/engines")).json() == []
    assert "Traceback" not in stack.gateway.log()


@contextlib.contextmanager
def _serve_page(host: str, html: str):
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _assert_refused(reply: httpx.Response, status: int, needle: str) -> None:
    assert reply.status_code == status, f"{reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["code"] == status and needle in body["error"], body
