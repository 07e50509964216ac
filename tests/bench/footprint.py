"""Footprint: resident memory (VmRSS) of each service at rest and under the loads above.

The other benchmarks record what they see: the RSS of their services right
after start-up (idle) and the peak sampled every 0.2 s while their load ran.
`aceorch up` (the start-up benchmark) gives every service's size at rest.
Run alone, this runs the start-up benchmark for the idle figures, and the
HTTP benchmark for a loaded one.
"""

from __future__ import annotations

import sys

from tests.bench.harness import Results

BENCH = "footprint"
TARGET_MB = 80.0
SERVICES = ("state-keeper", "prober", "provisioner", "janitor", "reaper", "gateway")


async def bench(results: Results) -> None:
    print("\n== footprint: VmRSS of each service, at rest and under load", flush=True)
    if not all(service in results.footprint for service in SERVICES):
        from tests.bench import http_api, startup

        await startup.bench(results)
        await http_api.bench(results)
    report(results)


def report(results: Results) -> None:
    for service in (*SERVICES, *sorted(set(results.footprint) - set(SERVICES))):
        entry = results.footprint.get(service, {})
        checked = service in SERVICES
        for when, value in (("at rest", entry.get("idle")), ("under load", entry.get("load"))):
            if value is None and when == "under load":
                continue
            target = dict(target=f"< {TARGET_MB:g} MB", ok=value is not None and value < TARGET_MB) if checked else {}
            note = results.footprint_where.get(service, "") if when == "under load" else ""
            results.add(BENCH, f"{service} RSS {when}", value, "MB", digits=1, note=note, **target)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
