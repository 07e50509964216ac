"""A restarted system shows and hands out only engines it has seen alive (issue 11, DESIGN §5).

`aceorch up` on a data dir, Ctrl-C (its engines are stopped with it), `aceorch up`
again on the same dir. From the moment the second gateway answers, `/engines` is
polled as fast as it answers and `engine.select` is asked over NATS as fast as the
state-keeper answers: no engine may be listed `healthy`, or be selected, while its
port refuses connections (the first run's engines are gone; their records still
say `healthy`, with a `last_health_check` from before the restart), and the new
engines must all be healthy within 10 s. Real nats-server, services and acesim.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import nats
import pytest
from test_cli_up import UpRun

from shared import auth

WATCH_S = 10.0  # every engine healthy within this, from the first answer
RESTART_ENV = {
    "MIN_REPLICAS": "2",
    "MAX_REPLICAS": "4",
    # The selections below reserve a slot each: short reservations and room for many keep them from
    # asking for engines the test does not expect.
    "RESERVATION_TTL_S": "1",
    "MAX_STREAMS_PER_ENGINE": "500",
}


async def accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


class Watch:
    """What the polls saw: violations of the rule, and when every engine was first healthy."""

    def __init__(self) -> None:
        self.listed_dead: list[tuple[float, str, int, str | None]] = []
        self.selected_dead: list[tuple[float, str, int]] = []
        self.selections = 0
        self.all_healthy_at: float | None = None
        self.first_answer_at: float | None = None


async def poll_engines(up: UpRun, watch: Watch, until: float) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.gateway_port}", timeout=2) as http:
        while time.monotonic() < until:
            try:
                reply = await http.get("/engines")
            except httpx.HTTPError:
                await asyncio.sleep(0.02)
                continue
            if reply.status_code != 200:
                await asyncio.sleep(0.02)
                continue
            now = time.monotonic()
            if watch.first_answer_at is None:
                watch.first_answer_at = now
                until = now + WATCH_S + 2  # a little past the bound, to see it hold
            engines = reply.json()
            healthy = [e for e in engines if e["health_status"] == "healthy"]
            for engine in healthy:
                if not await accepts(engine["host"], engine["port"]):
                    watch.listed_dead.append(
                        (
                            round(now - watch.first_answer_at, 2),
                            engine["container_name"],
                            engine["port"],
                            engine["last_health_check"],
                        )
                    )
            if watch.all_healthy_at is None and len(healthy) >= 2 and len(healthy) == len(engines):
                watch.all_healthy_at = now
            await asyncio.sleep(0.05)


async def select_continually(up: UpRun, watch: Watch, until: float) -> None:
    nc = None
    while nc is None and time.monotonic() < until:
        try:
            nc = await nats.connect(
                up.nats_url,
                max_reconnect_attempts=0,
                connect_timeout=1,
                allow_reconnect=False,
                **auth.client_options(str(up.keys / "proxy.nk")),
            )
        except Exception:  # nats-server still starting
            await asyncio.sleep(0.05)
    if nc is None:
        return
    try:
        while time.monotonic() < until:
            try:
                msg = await nc.request("engine.select", json.dumps({"content_key": "restart"}).encode(), timeout=1)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            if not (msg.headers or {}).get("Nats-Service-Error-Code"):
                engine = json.loads(msg.data)["engine"]
                watch.selections += 1
                if not await accepts(engine["host"], engine["port"]):
                    started = watch.first_answer_at or time.monotonic()
                    watch.selected_dead.append(
                        (round(time.monotonic() - started, 2), engine["container_name"], engine["port"])
                    )
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


# DESIGN's own health timings make a verdict hold 45 s: a restart quicker than that is
# covered only by `up` reporting its engines removed as it stops them.
DEFAULT_HEALTH = {"HEALTH_CHECK_INTERVAL_S": "30", "HEALTH_CHECK_TIMEOUT_S": "5", "HEALTH_RECHECK_S": "5"}


@pytest.mark.parametrize("health", [{}, DEFAULT_HEALTH], ids=["scaled-down", "default-health-timings"])
async def test_after_a_restart_no_engine_is_shown_or_selected_healthy_unless_it_answers(tmp_path, processes, health):
    data_dir = tmp_path / "data"
    settings = {**RESTART_ENV, **health}
    async with UpRun(processes, tmp_path, data_dir, **settings) as first:
        before = await first.healthy_engines(2)
        assert await first.stop(signal.SIGINT) == 0
    assert [e for e in before if await accepts(e["host"], e["port"])] == []  # stopped with the first run

    async with UpRun(processes, tmp_path, data_dir, **settings) as again:
        watch = Watch()
        give_up = time.monotonic() + 120  # the first answer itself may take a while on a busy machine
        selector = asyncio.create_task(select_continually(again, watch, give_up))
        await poll_engines(again, watch, give_up)
        selector.cancel()
        await asyncio.gather(selector, return_exceptions=True)
        assert watch.first_answer_at is not None, again.log()[-3000:]
        assert watch.listed_dead == [], f"listed healthy while their port refuses: {watch.listed_dead[:5]}"
        assert watch.selected_dead == [], f"selected while their port refuses: {watch.selected_dead[:5]}"
        assert watch.all_healthy_at is not None and watch.all_healthy_at - watch.first_answer_at <= WATCH_S, (
            await again.get("/engines")
        )
        assert watch.selections > 0
        old = {e["container_id"] for e in before}
        assert not old & {e["container_id"] for e in await again.get("/engines")}
        assert await again.stop(signal.SIGINT) == 0
