"""Summing the state-keeper replicas' $SRV.STATS replies (services.gateway.metrics.sum_stats)."""

from __future__ import annotations

import json

from services.gateway.metrics import sum_stats


def reply(replica: str, data: dict, endpoints: int = 6) -> bytes:
    return json.dumps(
        {
            "type": "io.nats.micro.v1.stats_response",
            "name": "state-keeper",
            "id": replica,
            "endpoints": [
                {"name": f"e{i}", "subject": f"s{i}", "num_requests": i, "data": data} for i in range(endpoints)
            ],
        }
    ).encode()


def test_each_replica_is_counted_once_however_many_endpoints_carry_its_data():
    a = reply(
        "A",
        {
            "selections": {"selected": 3, "no_capacity": 1},
            "rejected": {"malformed_json": 2},
            "conflicts": {"engine": 2},
        },
    )
    b = reply(
        "B",
        {
            "selections": {"selected": 4},
            "applied": {"stream.started": 5},
            "bad_requests": {"select": 1},
            "conflicts": {"engine": 3},
        },
    )
    replicas, totals = sum_stats([a, b, a])  # a duplicate reply of A must not count twice
    assert replicas == 2
    assert totals["selections"] == {"selected": 7, "no_capacity": 1}
    assert totals["rejected"] == {"malformed_json": 2}
    assert totals["applied"] == {"stream.started": 5}
    assert totals["bad_requests"] == {"select": 1}
    assert totals["conflicts"] == {"engine": 5}


def test_garbage_replies_are_skipped():
    good = reply("A", {"selections": {"shared": 1}})
    junk = [
        b"",
        b"not json",
        b"[]",
        json.dumps({"id": "X"}).encode(),
        reply("Y", "not a dict"),
        reply("Z", {"selections": {"selected": "many"}}),
    ]
    replicas, totals = sum_stats([*junk, good])
    assert totals["selections"] == {"shared": 1}
    assert replicas == 2  # Z answered (its bad counter is ignored); the rest had no usable data
