"""Measurement, not a test (`make test` does not collect it): N /api/live clients while ~90
engine.health events a second change 30 engine records; prints the gateway's CPU time, how many
clients were refused, and GET /engines p50 before and during the load (RELIABILITY.md, issue 21).

    BENCH_CLIENTS=1000 BENCH_MAX=100 .venv/bin/python -m pytest -q -s -p no:cacheprovider \
        tests/gateway/measure_live_load.py
"""

import asyncio
import os
import statistics
import time

from shared import names
from shared.schemas import EngineHealth, EngineRegistered, encode, utcnow

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "1000"))
MAX = os.environ.get("BENCH_MAX", "100")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as stat:
        f = stat.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def p50(http, n=60):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = await http.get("/engines")
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200
        await asyncio.sleep(0.05)
    return statistics.median(times)


async def test_measure_live_load(make_stack):
    stack = await make_stack(LIVE_MAX_CLIENTS=MAX)
    host, port = stack.url.removeprefix("http://").split(":")
    ids = []
    for i in range(30):
        ev = EngineRegistered(container_id=f"ext-{i}", host="127.0.0.1", port=30000 + i, runtime="external")
        await stack.nc.jetstream().publish(names.ENGINE_REGISTERED, encode(ev))
        ids.append(ev.container_id)
    await stack.engine("ext-29")
    base = await p50(stack.http)
    statuses = {}
    conns = []

    async def open_one():
        try:
            r, w = await asyncio.open_connection(host, int(port))
            w.write(f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), 30)
            code = line.split()[1].decode() if line else "closed"
        except Exception as e:
            code = type(e).__name__
        statuses[code] = statuses.get(code, 0) + 1
        if code == "200":
            conns.append((r, w))
        else:
            w.close()

    for chunk in range(0, CLIENTS, 100):
        await asyncio.gather(*(open_one() for _ in range(min(100, CLIENTS - chunk))))

    async def drain(r):
        try:
            while await r.read(65536):
                pass
        except Exception:
            pass

    readers = [asyncio.create_task(drain(r)) for r, _ in conns]
    stop = False
    sent = 0

    async def health():
        nonlocal sent
        i = 0
        while not stop:
            for _ in range(9):
                ok = (i // 30) % 2 == 0
                await stack.nc.publish(
                    names.ENGINE_HEALTH,
                    encode(EngineHealth(container_id=ids[i % 30], ok=ok, checked_at=utcnow(), latency_ms=2.0)),
                )
                i += 1
                sent += 1
            await asyncio.sleep(0.1)

    pid = stack.gateway.pid
    h = asyncio.create_task(health())
    await asyncio.sleep(1)
    c0, t0, s0 = cpu_s(pid), time.monotonic(), sent
    loaded = await p50(stack.http, 120)
    await asyncio.sleep(max(0, 9 - (time.monotonic() - t0)))
    c1, t1, s1 = cpu_s(pid), time.monotonic(), sent
    stop = True
    await h
    m = (await stack.http.get("/metrics")).text
    metr = {line.split()[0]: line.split()[1] for line in m.splitlines() if line.startswith("aceorch_gateway_")}
    print(
        f"\nRESULT clients_requested={CLIENTS} LIVE_MAX_CLIENTS={MAX} statuses={statuses} "
        f"events/s={(s1 - s0) / (t1 - t0):.0f} gateway_cpu={c1 - c0:.2f}s in {t1 - t0:.1f}s "
        f"GET /engines p50 idle={base:.1f}ms loaded={loaded:.1f}ms metrics={metr}"
    )
    for t in readers:
        t.cancel()
    for _, w in conns:
        w.close()
