"""The janitor against real parts: a state-keeper, the prober, acesim engines in the local runtime."""

import os
import shutil
import sys
from pathlib import Path

from prometheus_client.utils import floatToGoString
from support import free_port, wait_for_port, wait_until

from shared import names
from shared.policy.cleanup import format_bytes


async def started(process, text="started with"):
    await wait_until(lambda: text in process.log(), timeout=20, what=f"{process.name} to log {text!r}")


async def test_caches_are_cleaned_when_streams_end(pools, processes, tmp_path):
    """engine.idle → claim → du → empty → release → engine.cleaned; external engines are left alone."""
    pool = await pools()
    external_port, external_cache = free_port(), tmp_path / "external-cache"
    processes.start(
        "acesim-external",
        [sys.executable, "-m", "deploy.acesim", "--port", str(external_port), "--cache-dir", str(external_cache)],
    )
    wait_for_port(external_port)
    specs = await pool.create_engines(2)
    await pool.register_external("127.0.0.1", external_port, "external-1")
    await pool.wait_healthy(3)
    # A sweep interval far beyond the test: whatever gets cleaned here was cleaned on engine.idle.
    metrics_port = free_port()
    janitor = pool.service("janitor", AUTOSCALE_INTERVAL_S=300, METRICS_PORT=metrics_port)
    await started(janitor)

    engines = {e["container_id"]: e for e in await pool.engines()}
    for engine in engines.values():
        await pool.play(engine, f"content-{engine['port']}", seconds=2.0)
    measured = {cid: (await pool.sim_state(e["port"]))["cache_bytes"] for cid, e in engines.items()}
    assert all(size > 0 for size in measured.values()), measured
    for cid, engine in engines.items():
        await pool.ended(f"stream-content-{engine['port']}", cid)

    local = [spec.container_id for spec in specs]

    async def all_cleaned():
        records = {cid: await pool.engine(cid) for cid in local}
        return records if all(r["last_cache_cleanup"] for r in records.values()) else None

    records = await wait_until(all_cleaned, timeout=20, what="both local engines cleaned")
    for spec in specs:
        record = records[spec.container_id]
        assert record["cache_size_bytes"] == measured[spec.container_id] > 0
        assert record["state"] == "active" and record["claim"] is None
        assert (await pool.sim_state(spec.port))["cache_bytes"] == 0
        assert Path(spec.cache_dir).is_dir() and os.listdir(spec.cache_dir) == []
        line = f"janitor: cleaned cache of {spec.container_name} ({format_bytes(measured[spec.container_id])})"
        assert line in janitor.log()
    cleaned = pool.recorder.of(names.ENGINE_CLEANED)
    assert sorted(e["container_id"] for e in cleaned) == sorted(local)
    assert all(e["ok"] and e["cache_size_bytes"] == measured[e["container_id"]] for e in cleaned)

    metrics = (await pool.http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'aceorch_janitor_cleans_total{result="ok"} 2.0' in metrics
    cleaned_bytes = sum(measured[cid] for cid in local)
    assert f"aceorch_janitor_cache_bytes_cleaned_total {floatToGoString(cleaned_bytes)}" in metrics

    external = await pool.engine("external-1")
    assert external["last_cache_cleanup"] is None and external["last_stream_usage"] is not None
    assert (await pool.sim_state(external_port))["cache_bytes"] == measured["external-1"] > 0
    assert not any(c.container_id == "external-1" for c in pool.recorder.claims)


async def test_a_busy_engine_is_skipped_and_the_sweep_cleans_it_once_free(pools):
    pool = await pools(RESERVATION_TTL_S=3)
    (spec,) = await pool.create_engines(1)
    (engine,) = await pool.wait_healthy(1)
    await pool.play(engine, "busy-content", seconds=1.5)
    await pool.ended("stream-busy-content", spec.container_id)  # no janitor yet: this engine.idle is lost
    await wait_until(lambda: _without_streams(pool, spec.container_id), timeout=10, what="the stream's end applied")
    size = (await pool.sim_state(spec.port))["cache_bytes"]
    reply, _ = await pool.select()  # a live reservation: the engine is busy for RESERVATION_TTL_S
    assert reply["engine"]["container_id"] == spec.container_id

    janitor = pool.service("janitor", LOG_LEVEL="DEBUG")
    await started(janitor)
    await pool.nc.publish(names.ENGINE_IDLE, f'{{"container_id": "{spec.container_id}"}}'.encode())
    await wait_until(
        lambda: f"skipping {spec.container_id} (idle)" in janitor.log(),
        timeout=10,
        what="the janitor to skip the busy engine",
    )
    assert "is busy: 1 streams or reservations" in janitor.log()
    assert pool.recorder.of(names.ENGINE_CLEANED) == []
    assert (await pool.sim_state(spec.port))["cache_bytes"] == size > 0

    # Once the reservation lapses, a sweep finds the engine used since its last clean.
    await wait_until(lambda: pool.recorder.of(names.ENGINE_CLEANED), timeout=15, what="the sweep's clean")
    (event,) = pool.recorder.of(names.ENGINE_CLEANED)
    assert event["ok"] and event["cache_size_bytes"] == size
    assert "sweep found 1 idle engine(s) used since their last clean" in janitor.log()
    assert [c.purpose for c in pool.recorder.claims] == ["clean"]
    assert os.listdir(spec.cache_dir) == []


async def test_a_failed_clean_is_reported_and_the_engine_released(pools):
    pool = await pools()
    (spec,) = await pool.create_engines(1)
    (engine,) = await pool.wait_healthy(1)
    janitor = pool.service("janitor", AUTOSCALE_INTERVAL_S=300)
    await started(janitor)
    await pool.play(engine, "doomed", seconds=1.0)
    shutil.rmtree(spec.cache_dir)  # the clean script must say so, not report an empty cache
    await pool.ended("stream-doomed", spec.container_id)

    await wait_until(lambda: pool.recorder.of(names.ENGINE_CLEANED), timeout=15, what="engine.cleaned")
    (event,) = pool.recorder.of(names.ENGINE_CLEANED)
    assert event["ok"] is False and event["cache_size_bytes"] is None
    assert "does not exist (check ENGINE_CACHE_DIR)" in event["error"]

    async def released():
        record = await pool.engine(spec.container_id)
        return record if record["last_error"] and record["claim"] is None else None

    record = await wait_until(released, timeout=10, what="the failure recorded and the claim released")
    assert record["last_error"].startswith("cache clean failed: clean script exited 3")
    assert record["last_cache_cleanup"] is None and record["state"] == "active"
    assert f"cache clean of {spec.container_name} failed" in janitor.log()
    reply, _ = await pool.select()  # released: the engine takes streams again
    assert reply["engine"]["container_id"] == spec.container_id


async def _without_streams(pool, container_id: str) -> bool:
    record = await pool.engine(container_id)
    return record is not None and record["streams"] == []


async def test_each_hosts_janitor_hears_every_engine_idle_and_cleans_only_its_own(pools):
    """Janitors of two hosts: every engine.idle reaches host-b's, however the other group takes it."""
    pool = await pools()
    specs = await pool.create_engines(4, host_id="host-b")
    await pool.wait_healthy(4)
    # A sweep interval far beyond the test: whatever gets cleaned here was cleaned on engine.idle.
    janitors = {host: pool.service("janitor", HOST_ID=host, AUTOSCALE_INTERVAL_S=300) for host in ("host-a", "host-b")}
    for janitor in janitors.values():
        await started(janitor)
    for spec in specs:
        await pool.started(f"s-{spec.port}", spec.container_id)
        await pool.ended(f"s-{spec.port}", spec.container_id)

    async def cleaned():
        return len({e["container_id"] for e in pool.recorder.of(names.ENGINE_CLEANED)}) == 4

    await wait_until(cleaned, timeout=20, what="all 4 host-b engines cleaned on engine.idle")
    assert janitors["host-b"].log().count("janitor: cleaned cache of") == 4
    assert "cleaned cache of" not in janitors["host-a"].log()
    assert {c.holder for c in pool.recorder.claims if c.purpose == "clean"} == {_holder(janitors["host-b"])}


def _holder(janitor) -> str:
    return next(line.split("holder ")[1].rstrip(")") for line in janitor.log().splitlines() if "holder " in line)
