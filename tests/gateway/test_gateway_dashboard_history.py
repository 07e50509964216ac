"""History charts, the events section and engine detail in real headless Chromium (issue 14).

A scripted run — streams start, a cache is cleaned, an engine hangs, another is
removed — then the charts must hold data points, the events section must list
what happened newest first, and an engine's detail must draw its probe
sparkline. Every request the page makes must stay on 127.0.0.1 (uPlot comes
from the gateway, not a CDN). Screenshots go to test-artifacts/ and the
overview of a (made-up) hour to docs/, where the README shows it, when UPDATE_SCREENSHOTS is set.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest
from support import ROOT
from test_gateway_dashboard import ARTIFACTS, _collect_problems, _start_stream, browser  # noqa: F401 (fixture)

from shared import names
from shared.schemas import EngineCleaned, HistorySample, PlaybackStats, StreamStats, encode

pytestmark = pytest.mark.browser

DOCS_SHOT = ROOT / "docs" / "dashboard-history.png"
CHARTS = ("health", "streams", "latency", "selections")


async def test_history_events_and_engine_detail_render_from_a_scripted_run(make_stack, browser):  # noqa: F811
    stack = await make_stack(HISTORY_INTERVAL_S=0.5)
    ports = stack.start_engines(3)
    ids = [await stack.register(port, name=f"acestream-{n}") for n, port in enumerate(ports, 1)]
    await stack.start_health_checks()
    await stack.healthy(*ids)

    page = await browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=True)  # for wait_for_function
    problems = _collect_problems(page)
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlsplit(request.url).hostname or request.url))
    await page.goto(stack.url)
    await page.wait_for_selector('#conn[data-state="live"]')
    await page.evaluate("window.__sameDocument = true")
    points_at_load = await page.evaluate("aceCharts.points('health')")

    # The script: a stream with figures, a clean (as the janitor reports it), a hang, a removal.
    stream_id = await _start_stream(stack, ids[0], ports[0])
    await stack.engine(ids[0], lambda r: stream_id in r["streams"], what="the stream on acestream-1")
    figures = PlaybackStats(status="dl", peers=17, speed_down=640, reported_at=datetime.now(UTC))
    await stack.nc.publish(names.STREAM_STATS, encode(StreamStats(stream_id=stream_id, stats=figures)))
    cleaned = EngineCleaned(container_id=ids[2], ok=True, cache_size_bytes=734003200, cleaned_at=datetime.now(UTC))
    await stack.nc.jetstream().publish(
        names.ENGINE_CLEANED, encode(cleaned), headers={"Nats-Msg-Id": f"cleaned.{uuid.uuid4().hex}"}
    )
    async with httpx.AsyncClient() as engine_http:
        await engine_http.get(f"http://127.0.0.1:{ports[1]}/__sim/fault?mode=hang")
    await stack.engine(ids[1], lambda r: r["health_status"] == "unhealthy", what="acestream-2 unhealthy")
    assert (await stack.http.delete(f"/engines/{ids[2]}")).status_code == 202

    expected = [
        "acestream-3 removed: deregistered via API",
        "acestream-2 unhealthy: timeout after 0.5 s, 2 failures in a row",
        "acestream-3 cache cleaned: 700 MB removed",
        "stream of ch-news started on acestream-1",
    ]
    await page.wait_for_function(
        f"document.querySelector('#event-list').textContent.includes({expected[0]!r})", timeout=20_000
    )
    texts = await page.eval_on_selector_all("#event-list li .text", "items => items.map(i => i.textContent)")
    assert [t for t in texts if t in expected] == expected, texts
    for name in CHARTS:
        await page.wait_for_function(f"aceCharts.points({name!r}) >= 3", timeout=20_000)
        assert await page.is_visible(f"#chart-{name} canvas")
    assert not await page.is_visible("#history-empty")
    assert await page.evaluate("aceCharts.points('health')") > points_at_load
    assert await page.evaluate("window.__sameDocument") is True, "the charts grew by a reload, not live"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-history.png"), full_page=True)

    # Engine detail, opened by clicking its row: record, sparkline with the failed probes, its flip.
    await page.click(f'tr.engine[data-id="{ids[1]}"]')
    await page.wait_for_selector("#engine-detail:not([hidden])")
    assert page.url.endswith(f"#/engines/{ids[1]}")
    await page.wait_for_function("aceCharts.points('sparkline') >= 3", timeout=20_000)
    assert await page.is_visible("#engine-sparkline canvas")
    await page.wait_for_function(
        "document.querySelector('#detail-transitions').textContent.includes('unhealthy: timeout')"
    )
    assert await page.text_content('#detail-record dd[data-label="Health"]') == "Unhealthy"
    await page.screenshot(path=str(ARTIFACTS / "engine-detail.png"), full_page=True)

    # The busy engine's detail lists its stream with the proxy's figures and says it is not idle.
    await page.goto(f"{stack.url}/#/engines/{ids[0]}")
    peers = f'#detail-streams tr[data-id="{stream_id}"] td[data-label="Peers"]'
    await page.wait_for_function(f"document.querySelector('{peers}')?.textContent === '17'", timeout=20_000)
    assert (await page.text_content('#detail-record dd[data-label="Idle"]')).startswith("busy")
    assert await page.text_content('#detail-record dd[data-label="Last clean"]') == "Never"

    # Under the dashboard's own CSP (no eval, no inline script or style), the charts draw all the same.
    strict = await browser.new_page(viewport={"width": 1440, "height": 900})
    problems += _collect_problems(strict)
    await strict.goto(stack.url)
    for name in CHARTS:
        await strict.wait_for_selector(f"#chart-{name} canvas")
    await strict.wait_for_selector("#event-list li")

    # For the README: the same page over an hour (samples written as the sampler would have, earlier).
    await _publish_an_hour(stack.nc.jetstream())
    await page.goto(stack.url)
    await page.wait_for_function("aceCharts.points('health') > 300", timeout=20_000)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-history-hour.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):  # `UPDATE_SCREENSHOTS=1 make test` refreshes the README's
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "dashboard-history-hour.png", DOCS_SHOT)

    assert problems == [], problems
    assert hosts == {"127.0.0.1"}, f"requests left loopback: {hosts}"


async def _publish_an_hour(js) -> None:
    """An evening's shape: viewers arriving, one engine failing for ten minutes, a latency spike."""
    last = int(time.time() // 10) - 6
    for n in range(354):
        wave = math.sin(n / 40)
        failing = 1 if 150 <= n < 210 else 0
        sample = HistorySample(
            epoch=last - 353 + n,
            at=datetime.fromtimestamp((last - 353 + n) * 10, UTC),
            interval_s=10.0,
            healthy=6 - failing - (n % 97 == 0),
            unhealthy=failing,
            unknown=int(n % 97 == 0),
            active=6,
            streams=int(8 + 6 * wave),
            channels=int(5 + 3 * wave),
            peers=int(60 + 45 * wave + n % 7),
            speed_down_kib=int(4000 + 3000 * wave),
            selections_per_s=round(0.3 + 0.25 * math.cos(n / 13) ** 2, 3),
            no_capacity_per_s=0.05 if 180 <= n < 190 else 0.0,
            probes=12,
            probe_p50_ms=round(4 + math.sin(n / 9), 2),
            probe_p99_ms=500.0 if failing else round(25 + 10 * abs(math.sin(n / 17)), 2),
            cache_cleaned_bytes=n * 3 * 1024 * 1024,
        )
        await js.publish(names.HISTORY_SAMPLE, encode(sample))
