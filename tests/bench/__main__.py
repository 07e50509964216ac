"""`python -m tests.bench` (`make bench`): every benchmark in sequence, then one summary table.

Figures are also written to build/bench/all.json (BENCHMARKS.md quotes the last run).
"""

from __future__ import annotations

import sys
import time
import traceback

from shared.service import run_loop
from tests.bench import footprint, http_api, ingest, probing, relay, selection, startup
from tests.bench.harness import Results, machine

SUITE = (
    ("selection", selection.bench),
    ("ingest", ingest.bench),
    ("probing", probing.bench),
    ("http", http_api.bench),
    ("relay", relay.bench),
    ("startup", startup.bench),
    ("footprint", footprint.bench),
)


async def run_all(results: Results) -> list[str]:
    failed = []
    for name, bench in SUITE:
        began = time.monotonic()
        try:
            await bench(results)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            results.add(
                name, "benchmark completed", 0, "", target="yes", ok=False, note="raised; see the traceback above"
            )
        print(f"  ({name}: {time.monotonic() - began:.0f}s)", flush=True)
    return failed


def main() -> int:
    info = machine()
    print(
        f"aceorch benchmarks on {info['nproc']} x {info['cpu']}, {info['ram_gib']} GiB, Python {info['python']}, "
        f"{info['nats_server']}, nats-py {info['nats_py']}, bus {info['bus']}",
        flush=True,
    )
    results = Results()
    began = time.monotonic()
    failed = run_loop(run_all(results))
    print()
    print(results.table(f"Summary ({time.monotonic() - began:.0f}s)"))
    print(f"\nfigures with notes: {results.save('all')}")
    if failed:
        print(f"benchmarks that did not complete: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
