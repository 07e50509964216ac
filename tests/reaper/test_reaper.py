"""The reaper against real parts: floors, grace, streams that start while it works, replacements."""

import asyncio
import random
import time
import uuid
from collections import Counter

from support import free_port, request_json, wait_until

from shared import names


async def started(process, text="started with"):
    await wait_until(lambda: text in process.log(), timeout=20, what=f"{process.name} to log {text!r}")


async def busy_everywhere(pool, count):
    """One stream per engine, placed by selection (MAX_STREAMS_PER_ENGINE=1); their ids."""
    streams = {}
    for i in range(count):
        reply, _ = await pool.select()
        stream_id = f"s{i}-{uuid.uuid4().hex[:6]}"
        await pool.started(stream_id, reply["engine"]["container_id"], reply["reservation_id"])
        streams[stream_id] = reply["engine"]["container_id"]
    assert len(set(streams.values())) == count
    return streams


def reaped(pool):
    """The reaper's removals per engine.

    The provisioner's reconciliation may also report an engine the reaper just
    stopped as `gone` before the reaper's own event lands; that must be the
    only other reason seen, and only for engines the reaper removed.
    """
    removals = pool.recorder.of(names.ENGINE_REMOVED)
    idle = Counter(e["container_id"] for e in removals if e["reason"] == "idle")
    others = [e for e in removals if e["reason"] != "idle"]
    return idle, others


async def test_twelve_engines_idle_at_once_are_reaped_to_exactly_the_floors(pools):
    pool = await pools(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, MAX_STREAMS_PER_ENGINE=1, ENGINE_GRACE_PERIOD_S=2)
    specs = await pool.create_engines(12)
    await pool.wait_healthy(12)
    streams = await busy_everywhere(pool, 12)
    pool.sample_counts(0.05)
    metrics_port = free_port()
    reaper = pool.service("reaper", METRICS_PORT=metrics_port)
    janitor = pool.service("janitor")
    provisioner = pool.service("provisioner")  # same floors: it must not start engines while they go
    await started(reaper)
    await started(janitor)
    await wait_until(lambda: "adopted 12 engines" in provisioner.log(), timeout=20, what="the provisioner adopting")

    await asyncio.gather(*(pool.ended(stream_id, cid) for stream_id, cid in streams.items()))

    await wait_until(lambda: len(reaped(pool)[0]) >= 10, timeout=30, what="10 removals")
    await pool.sweeps_done("reaper-sweep", 3)  # three more sweeps: nothing else may go
    assert len(await pool.engines()) == 2
    assert len(await pool.runtime.list_managed()) == 2
    removed, others = reaped(pool)
    assert len(removed) == 10 and set(removed.values()) == {1}
    assert all(e["reason"] == "gone" and e["container_id"] in removed for e in others), others
    assert min(pool.recorder.counts) == 2, pool.recorder.counts
    assert len(pool.recorder.counts) > 50  # sampled throughout
    survivors = await pool.engines()
    assert all(e["health_status"] == "healthy" and not e["streams"] for e in survivors)
    assert {e["container_id"] for e in survivors} | set(removed) == {s.container_id for s in specs}
    assert reaper.log().count("reaper: removed idle engine") == 10
    metrics = (await pool.http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert "aceorch_reaper_engines_reaped_total 10.0" in metrics
    registered = {e["container_id"] for e in pool.recorder.of(names.ENGINE_REGISTERED)}
    assert registered == {s.container_id for s in specs}  # adoptions only, nothing started
    assert provisioner.alive()


async def test_engines_within_grace_or_in_use_are_kept(pools):
    pool = await pools(MIN_REPLICAS=0, MIN_FREE_REPLICAS=0, ENGINE_GRACE_PERIOD_S=8, RESERVATION_TTL_S=60)
    await pool.create_engines(3)
    engines = await pool.wait_healthy(3)
    streaming = engines[0]
    await pool.started("keep-me", streaming["container_id"])
    await wait_until(lambda: pool.recorder.records[streaming["container_id"]].streams, what="the stream applied")
    reply, _ = await pool.select()
    reserved = reply["engine"]
    (idle,) = [e for e in engines if e["container_id"] not in (streaming["container_id"], reserved["container_id"])]
    reaper = pool.service("reaper")
    await started(reaper)

    await pool.sweeps_done("reaper-sweep", 1)  # a sweep within the grace period: nothing goes
    assert pool.recorder.of(names.ENGINE_REMOVED) == []
    await wait_until(lambda: pool.recorder.of(names.ENGINE_REMOVED), timeout=30, what="the idle engine reaped")
    await pool.sweeps_done("reaper-sweep", 2)
    assert [e["container_id"] for e in pool.recorder.of(names.ENGINE_REMOVED)] == [idle["container_id"]]
    assert {e["container_id"] for e in await pool.engines()} == {streaming["container_id"], reserved["container_id"]}


ENGINES_FOR_RACES = 10
SELECTION_PAUSE_S = (0.2, 0.5)


async def test_streams_starting_while_the_reaper_works_never_land_on_a_removed_engine(pools):
    """A proxy that starts a stream on an engine the reaper has just claimed: either the reaper backs off,
    or the engine goes and the state-keeper ends the stream. Selections meanwhile never return an engine
    that is claimed.

    The selections' own reservations protect engines from the reaper (DESIGN §5), and every raced
    stream that wins keeps its engine for good: the pool and the selection pace leave the reaper idle
    engines to take until it has done six reaps (8 engines and a selection every 0.05-0.3 s starved it:
    the last idle engines held a live reservation at almost every sweep, and the wait timed out).
    """
    pool = await pools(
        MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, ENGINE_GRACE_PERIOD_S=1, RESERVATION_TTL_S=1, MAX_STREAMS_PER_ENGINE=2
    )
    await pool.create_engines(ENGINES_FOR_RACES)
    await pool.wait_healthy(ENGINES_FOR_RACES)
    rng = random.Random(7)
    raced: list[str] = []

    reap_claims: list[str] = []

    def start_on_claimed(claim):
        # The race itself: a stream.started for the engine the very moment its claim shows up
        # (every other reap claim, so some reaps go through and some must back off).
        if claim.purpose == "reap":
            reap_claims.append(claim.container_id)
        if claim.purpose == "reap" and len(reap_claims) % 2:
            stream_id = f"race-{claim.container_id}-{uuid.uuid4().hex[:6]}"
            raced.append(stream_id)
            asyncio.get_running_loop().create_task(pool.started(stream_id, claim.container_id))

    pool.recorder.on_claim.append(start_on_claimed)
    bad_selections: list[dict] = []
    selections = 0

    async def select_forever():
        nonlocal selections
        while True:
            body, headers = await request_json(pool.nc, names.ENGINE_SELECT, {})
            if not headers.get("Nats-Service-Error-Code"):
                selections += 1
                engine = body["engine"]
                if engine["state"] != "active" or engine["claim"] is not None:
                    bad_selections.append(engine)
                if rng.random() < 0.3:  # some selections become streams that end soon after
                    stream_id = f"sel-{uuid.uuid4().hex[:8]}"
                    await pool.started(stream_id, engine["container_id"], body["reservation_id"])
                    asyncio.get_running_loop().call_later(
                        rng.uniform(0.2, 1.5),
                        lambda s=stream_id, c=engine["container_id"]: asyncio.ensure_future(pool.ended(s, c)),
                    )
            await asyncio.sleep(rng.uniform(*SELECTION_PAUSE_S))

    selecting_since = time.time()
    selector = asyncio.get_running_loop().create_task(select_forever())
    pool.service("reaper")
    pool.service("janitor")
    try:

        def progress():
            removals = len(pool.recorder.of(names.ENGINE_REMOVED))
            done = removals >= 3 and len(raced) >= 3 and selections >= 10
            return (
                done
                or f"{removals} removals, {len(raced)} raced, {selections} selections, {len(reap_claims)} reap claims"
            )

        try:
            await wait_until(
                lambda: progress() is True, timeout=90, what="removals with streams and selections racing them"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; so far {progress()}") from None
    finally:
        selector.cancel()
        await asyncio.gather(selector, return_exceptions=True)
    selecting_until = time.time()

    async def settled():
        engines = await pool.engines()
        return engines if not any(e["claim"] for e in engines) else None

    await asyncio.sleep(2)
    engines = await wait_until(settled, timeout=20, what="no claims left")
    present = {e["container_id"]: e for e in engines}
    removed = set(pool.recorder.per_engine(names.ENGINE_REMOVED))
    body, _ = await request_json(pool.nc, names.STREAM_LIST, {})
    streams = body["streams"]
    for stream in streams:
        if stream["status"] == "started":
            assert stream["container_id"] in present, stream
            assert stream["stream_id"] in present[stream["container_id"]]["streams"], stream
        if stream["container_id"] in removed:
            assert stream["status"] == "ended", stream
    assert removed and not removed & set(present)
    # A raced stream wins over the reap: its engine stays, and the stream is still playing there.
    survivors = [s for s in streams if s["stream_id"] in raced and s["status"] == "started"]
    assert survivors, "at least one raced stream should have kept its engine"
    assert all(s["container_id"] in present for s in survivors)
    assert bad_selections == [] and selections >= 10
    purposes = {c.purpose for c in pool.recorder.claims if selecting_since <= c.at <= selecting_until}
    assert purposes == {"clean", "reap"}  # selections ran while engines were being cleaned and reaped
    assert len(await pool.runtime.list_managed()) == len(present)
