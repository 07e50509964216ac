"""Render a saved run as Markdown tables (what BENCHMARKS.md quotes).

python -m tests.bench.markdown [build/bench/all.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.bench.harness import RESULTS_DIR


def render(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Run of {data['when']} on {m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"{m['nats_server']}, nats-py {m['nats_py']}, msgspec {m['msgspec']}.",
        "",
    ]
    bench = None
    for f in data["figures"]:
        if f["bench"] != bench:
            bench = f["bench"]
            lines += ["", f"#### {bench}", "", "| figure | value | target | | notes |", "|---|---|---|---|---|"]
        verdict = "" if f["ok"] is None else ("PASS" if f["ok"] else "**MISS**")
        value = f"{f['shown']} {f['unit']}".strip()
        lines.append(f"| {f['name']} | {value} | {f['target']} | {verdict} | {f['note'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "all.json"
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
