"""Readers never show a `healthy` older than DESIGN §5 allows (issue 11 item 3): the gateway's
/engines and /engines/{id}, and the state-keeper's engine.list and engine.get, show it as
`unknown` while the stored record still says `healthy` (a prober that stopped writes nothing)."""

from __future__ import annotations

import json

from support import free_port

from shared import names

# interval + 2 x timeout + recheck = 6 s: long enough to see the verdict first on a busy machine.
HEALTH = {"HEALTH_CHECK_INTERVAL_S": 4, "HEALTH_CHECK_TIMEOUT_S": 0.5, "HEALTH_RECHECK_S": 1}


async def test_a_verdict_older_than_the_bound_reads_unknown_everywhere_it_is_shown(make_stack, nc):
    stack = await make_stack(**HEALTH)
    cid = await stack.register(free_port(), name="went-quiet")
    await stack.report_health(cid, ok=True)
    await stack.healthy(cid)

    shown = await stack.engine(cid, lambda r: r["health_status"] == "unknown", timeout=20, what="the verdict stale")
    assert shown["last_health_check"] is not None  # when it was last seen alive stays visible
    stored = json.loads((await (await nc.jetstream().key_value(names.ENGINES_BUCKET)).get(cid)).value)
    assert stored["health_status"] == "healthy", "the record itself is unchanged: only what readers see"

    listed = (await stack.http.get("/engines")).json()
    assert [(e["container_id"], e["health_status"]) for e in listed] == [(cid, "unknown")]
    answer = await nc.request(names.ENGINE_LIST, b"{}", timeout=5)
    assert [(e["container_id"], e["health_status"]) for e in json.loads(answer.data)["engines"]] == [(cid, "unknown")]
    answer = await nc.request(names.ENGINE_GET, json.dumps({"container_id": cid}).encode(), timeout=5)
    assert json.loads(answer.data)["health_status"] == "unknown"
