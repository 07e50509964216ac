"""The outside client of the partition tier, run in its own namespace: `python partition_load.py DIR`.

It connects as admin (settings from the environment, shared.config), runs a
`StreamLoad` of selections and stream events, and every POLL_S writes
DIR/progress.json: what the load has done so far and the engine records as a
KV watch shows them — the test, in the root namespace, cannot reach the bus.
Once DIR/stop exists it finishes the load, checks KV against the model
(`StreamLoad.verify`, `record_invariants`) and writes DIR/result.json.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from chaos_load import StreamLoad, record_invariants, snapshot

from shared.bus import connect
from shared.config import load_config
from shared.kv import KvView
from shared.schemas import EngineRecord, decode_engine, utcnow

POLL_S = 0.2


def _write(path: Path, document: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, default=str))
    temporary.replace(path)


def _engines(view: KvView[EngineRecord]) -> dict[str, dict[str, object]]:
    return {
        key: {
            "host_id": entry.value.host_id,
            "health": entry.value.health_status,
            "state": entry.value.state,
            "streams": len(entry.value.streams),
        }
        for key, entry in view.items().items()
    }


async def main(directory: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config()
    bus = await connect(config, "partition-load")
    view: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
    await view.start(timeout=30)
    load = StreamLoad(
        bus,
        workers=3,
        keep_open=0.0,  # an outside client ends what it starts: streams left open would pin engines
        hold_s=(0.05, 0.3),
        max_streams_per_engine=config.max_streams_per_engine,
        reservation_ttl_s=config.reservation_ttl_s,
        select_timeout_s=1.0,
        publish_timeout_s=1.0,
        pause_s=0.05,
    )
    selections: list[tuple[float, str]] = []  # (wall clock, engine) of every reply
    load.on_reply = lambda reply: selections.append((time.time(), reply.engine.container_id))
    load.start()
    stop = directory / "stop"
    while not stop.exists():
        stats = load.stats
        _write(
            directory / "progress.json",
            {
                "at": time.time(),
                "events_acked": stats.events_acked,
                "selections_ok": stats.selections_ok,
                "selections_failed": stats.selections_failed,
                "publish_retries": stats.publish_retries,
                "server": str(bus.nc.connected_url.netloc if bus.nc.connected_url else None),
                "engines": _engines(view),
            },
        )
        await asyncio.sleep(POLL_S)
    await load.finish()
    result = await load.verify(bus, timeout=60)
    engines, streams = await snapshot(bus)
    _write(
        directory / "result.json",
        {
            **result,
            **load.figures(),
            "bad_reply_detail": load.stats.bad_replies[:10],
            "invariant_problems": record_invariants(engines, streams, utcnow())[:20],
            "selections": selections,
            "engines": {key: {"host_id": r.host_id, "health": r.health_status} for key, r in engines.items()},
        },
    )
    await view.stop()
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
