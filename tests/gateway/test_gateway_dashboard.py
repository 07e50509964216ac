"""The dashboard in real headless Chromium (Debian's package), driven by Playwright.

It must list the engines with the right colours and turn an engine red within
seconds when its acesim hangs — live, without a reload. Screenshots land in
test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright
from support import ROOT

from shared import names
from shared.schemas import EngineRegistered, PlaybackStats, StreamStats, encode

pytestmark = pytest.mark.browser

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
ARTIFACTS = ROOT / "test-artifacts"
GREEN, RED, GRAY = "rgb(22, 163, 74)", "rgb(220, 38, 38)", "rgb(156, 163, 175)"
HOSTILE_NAME = '<img src=x onerror="window.__xss = 1">'


@pytest.fixture
async def browser():
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


async def test_dashboard_shows_health_colours_and_turns_a_hung_engine_red_live(make_stack, browser):
    stack = await make_stack()
    ports = stack.start_engines(3)
    ids = [await stack.register(port, name=f"acestream-{n}") for n, port in enumerate(ports, 1)]
    page = await browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=True)  # CSP forbids eval
    problems = _collect_problems(page)
    await page.goto(stack.url)
    await page.wait_for_selector('#conn[data-state="live"]')
    await page.evaluate("window.__sameDocument = true")

    # Not probed yet: gray, and the KPI counts none healthy.
    await _wait_rows(page, 3)
    for cid in ids:
        assert await _health(page, cid) == ("unknown", GRAY)
    assert await page.text_content("#kpi-healthy-total") == "0 / 3"

    health_source = await stack.start_health_checks()
    await page.wait_for_function(
        "document.querySelectorAll('tr.engine[data-health=healthy]').length === 3", timeout=30_000
    )
    for cid in ids:
        assert await _health(page, cid) == ("healthy", GREEN)
    assert await page.text_content("#kpi-healthy-total") == "3 / 3"
    assert await _cell(page, ids[0], "Last used") == "Never"
    assert await _cell(page, ids[0], "Last check") != "Never"

    stream_id = await _start_stream(stack, ids[0], ports[0])
    await page.wait_for_selector("#stream-rows tr.stream")
    assert await page.text_content("#kpi-streams") == "1"
    assert await _stream_cell(page, stream_id, "Peers") == "—", "no figures yet"
    # A proxy's figures (stream.stats) reach the row live.
    figures = PlaybackStats(status="dl", peers=17, speed_down=640, speed_up=33, reported_at=datetime.now(UTC))
    await stack.nc.publish(names.STREAM_STATS, encode(StreamStats(stream_id=stream_id, stats=figures)))
    await page.wait_for_function(
        f"document.querySelector('tr.stream[data-id=\"{stream_id}\"] td[data-label=\"Peers\"]').textContent === '17'"
    )
    assert await _stream_cell(page, stream_id, "Speed") == "640 KiB/sup 33 KiB/s"
    listed = (await stack.http.get("/streams", params={"status": "started"})).json()
    assert [(s["stream_id"], s["stats"]["peers"], s["stats"]["speed_up"]) for s in listed] == [(stream_id, 17, 33)]
    await page.wait_for_function(
        f"document.querySelector('tr.engine[data-id=\"{ids[0]}\"] td[data-label=\"Last used\"]').textContent === 'just now'"
    )

    async with httpx.AsyncClient() as engine_http:
        await engine_http.get(f"http://127.0.0.1:{ports[1]}/__sim/fault?mode=hang")
    hung_at = time.monotonic()
    await page.wait_for_selector(f'tr.engine[data-id="{ids[1]}"][data-health="unhealthy"]', timeout=20_000)
    turned_red_s = time.monotonic() - hung_at
    assert await _health(page, ids[1]) == ("unhealthy", RED)
    assert await _health(page, ids[0]) == ("healthy", GREEN)
    assert await page.text_content("#kpi-healthy-total") == "2 / 3"
    assert await page.title() == "(1 unhealthy) AceStream fleet"
    assert await page.evaluate("window.__sameDocument") is True, "the page was reloaded"

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)
    phone = await browser.new_page(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, bypass_csp=True
    )
    await phone.goto(stack.url)
    await phone.wait_for_selector(f'tr.engine[data-id="{ids[1]}"][data-health="unhealthy"]')
    await phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"))
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "phone layout overflows"
    assert problems == [], problems
    print(f"health from {health_source}; hung engine red after {turned_red_s:.1f}s")


async def test_dashboard_shows_names_as_text_and_formats_times(make_stack, browser):
    stack = await make_stack()
    csp = (await stack.http.get("/")).headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # Without the CSP's help (it would block inline handlers anyway), the page itself must not render HTML.
    page = await browser.new_page(bypass_csp=True)
    problems = _collect_problems(page)
    await page.goto(stack.url)
    await page.wait_for_selector('#conn[data-state="live"]')
    assert await page.is_visible("#engines-empty")

    registered = await stack.http.post(
        "/engines", json={"host": "127.0.0.1", "port": 6999, "container_name": HOSTILE_NAME}
    )
    cid = registered.json()["container_id"]
    await page.wait_for_selector(f'tr.engine[data-id="{cid}"]')
    assert await page.text_content(f'tr.engine[data-id="{cid}"] .name') == HOSTILE_NAME
    assert await page.evaluate("window.__xss") is None
    assert await page.is_hidden("#engines-empty")

    # A provisioner's engine says which host runs it, and the filter finds engines by host.
    on_b = EngineRegistered(container_id="local-7", host="127.0.0.1", port=6998, runtime="local", host_id="rack-b")
    await stack.nc.jetstream().publish(names.ENGINE_REGISTERED, encode(on_b))
    host_cell = 'tr.engine[data-id="local-7"] .host-id'
    await page.wait_for_function(f"document.querySelector('{host_cell}')?.textContent === 'on rack-b'")
    await page.fill("#search", "rack-b")
    await _wait_rows(page, 1)
    await page.fill("#search", "")
    await _wait_rows(page, 2)

    now = datetime.now(UTC)
    ago = {
        "never": None,
        "minutes": (now - timedelta(minutes=5, seconds=10)).isoformat(),
        "hours": (now - timedelta(hours=2, minutes=3)).isoformat(),
        "seconds": (now - timedelta(seconds=42)).isoformat(),
    }
    texts = await page.evaluate(
        "(ago) => Object.fromEntries(Object.entries(ago).map(([k, v]) => [k, aceDashboard.relTime(v)]))", ago
    )
    assert texts == {"never": "Never", "minutes": "5m ago", "hours": "2h ago", "seconds": "42s ago"}
    assert await page.evaluate("aceDashboard.formatBytes(734003200)") == "700 MB"

    removed = await stack.http.delete(f"/engines/{cid}")
    assert removed.status_code == 202
    await page.wait_for_selector(f'tr.engine[data-id="{cid}"]', state="detached")
    assert problems == [], problems


# ------------------------------------------------------------ helpers


def _collect_problems(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    return problems


async def _wait_rows(page, count: int) -> None:
    await page.wait_for_function(f"document.querySelectorAll('tr.engine').length === {count}")


async def _health(page, cid: str) -> tuple[str, str]:
    row = f'tr.engine[data-id="{cid}"]'
    health = await page.get_attribute(row, "data-health")
    colour = await page.eval_on_selector(f"{row} .dot", "dot => getComputedStyle(dot).backgroundColor")
    return health, colour


async def _cell(page, cid: str, label: str) -> str:
    return (await page.text_content(f'tr.engine[data-id="{cid}"] td[data-label="{label}"] .ago')).strip()


async def _stream_cell(page, stream_id: str, label: str) -> str:
    return (await page.text_content(f'tr.stream[data-id="{stream_id}"] td[data-label="{label}"]')).strip()


async def _start_stream(stack, cid: str, port: int) -> str:
    async with httpx.AsyncClient() as engine_http:
        session = (await engine_http.get(f"http://127.0.0.1:{port}/ace/getstream?id=ch-news&format=json")).json()[
            "response"
        ]
    started = await stack.http.post(
        "/events/stream_started",
        json={
            "container_id": cid,
            "content_key": "ch-news",
            "key_type": "content_id",
            "is_live": True,
            "playback_session_id": session["playback_session_id"],
            "stat_url": session["stat_url"],
            "command_url": session["command_url"],
        },
    )
    assert started.status_code == 202, started.text
    return started.json()["stream_id"]
