"""Render RELIABILITY.md's table from the figures the last reliability run recorded.

    python tests/reliability/report.py                   # print the table
    python tests/reliability/report.py --write RELIABILITY.md   # replace the table in the file

Each scenario test writes test-artifacts/reliability/<test>.json (figures + outcome);
this script only formats them, so the table always shows what a run measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "reliability"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


@dataclass(frozen=True)
class Scenario:
    number: str
    title: str
    checks: str
    test: str  # test function name = artifact file name
    path: str
    figures: Callable[[dict], str]


def _events(f: dict) -> str:
    return (
        f"events acked/applied/lost: **{f['events_acked']} / {f['events_applied']} / {f['events_lost']}** "
        f"(applied counted from KV, asserted = acked, lost = 0), duplicates **{f['duplicates']}**, "
        f"stored twice **{f['stored_twice']}**"
    )


def _nats_restart(f: dict) -> str:
    r = f["reconnect_s"]
    return (
        f"{_events(f)}; observed: nats down {f['outage_s']} s, selections unavailable {f['selection_outages_s']} s "
        f"({f['selections_failed']} failed, retried); back after restart: state-keeper {r['state_keeper_selection']} s, "
        f"gateway {r['gateway_healthz']} s, prober {r['prober_first_probe']} s, sweeps "
        + ", ".join(f"{k[:-6]} {v} s" for k, v in r.items() if k.endswith("_sweep"))
        + f"; newcomer probed healthy "
        f"{f['newcomer_probed_healthy_s']} s, on /api/live {f['newcomer_on_live_feed_s']} s"
    )


def _cluster(f: dict) -> str:
    kills = "; ".join(
        f"{k['role']} {k['node']} killed: meta leader {k['meta_leader_after']} known after {k['meta_leader_known_after_s']} s, "
        f"events acked again after {k['events_acked_again_after_s']} s, selections after {k['selections_again_after_s']} s"
        for k in f["kills"]
    )
    return (
        f"{_events(f)}; replicas **{f['replicas']['ACE_EVENTS']}×**; observed: {kills}; {f['selections_failed']} selections "
        f"answered 503 (retried), {f['publish_retries']} publish retries with the same Nats-Msg-Id; "
        f"newcomer seen by every replica after {f['newcomer_seen_everywhere_s']} s"
    )


def _replicas(f: dict) -> str:
    sweeps = ", ".join(f"{job} {s['first_after_s']} s (interval {s['interval_s']} s)" for job, s in f["sweeps"].items())
    return (
        f"{_events(f)}; selections failed at the kill: **{f['selections_failed_at_kill']}** (bound: {f['in_flight_bound']} in flight); "
        f"every engine probed again within **{f['max_time_to_reprobe_s']} s** (bound: 2 intervals); sweeps run again after "
        f"(bound: 2 intervals each): {sweeps}; engines max **{f['engine_count_max']}** (bound MAX_REPLICAS), "
        f"records {f['engine_records']} = processes {f['engine_processes']} (asserted equal)"
    )


def _faults(f: dict) -> str:
    changes = sum(f["flapping_status_changes"].values())
    allowed = sum(f["flapping_changes_allowed_by_hysteresis"].values())
    return (
        f"{f['replies_checked']} selection replies checked, **{f['violations']} violations**; hung engines selectable at most "
        f"**{f['max_selectable_after_hang_s']} s** after hanging, unhealthy in KV within {f['max_hung_to_unhealthy_s']} s "
        f"(bound {f['bound_s']} s + {f['pipeline_slack_s']} s slack); flapping engines: {changes} status changes "
        f"(asserted ≤ {allowed}, what hysteresis allows) from {sum(f['flapping_observations'].values())} observations, "
        f"**{len(f['unjustified_transitions'])} unjustified**; health reports the keeper dropped as overtaken "
        f"**{f.get('reports_overtaken', 'not counted')}**; observed, not asserted: healthy engines turned unhealthy "
        f"{len(f['false_alarms_on_healthy_engines'])} (a stalled 2-core box can time out two probes in a row: each such "
        f"change is checked for justification above); claims granted {f['claims']['granted']} (asserted > 0)"
    )


def _races(f: dict) -> str:
    return (
        f"{f['streams_started']} streams, {f['starts_sent_late_or_near_expiry']} started near/after reservation expiry; "
        f"{f['engines_removed']} engines reaped ({f['reap_claims_seen']} reap claims), {f['cleans_seen']} cleans; "
        f"protected starts stranded on a removed engine: **{f['protected_starts_stranded']}**, engines reaped "
        f"under a protected stream: **{len(f['reaped_under_a_protected_stream'])}** (under a start whose reservation "
        f"had lapsed: {f['reaped_under_a_lapsed_start']}); grants over "
        f"MAX_STREAMS_PER_ENGINE: **{f['grants_over_capacity']}**; max engines {f['max_engines']}"
    )


def _provisioners(f: dict) -> str:
    return (
        f"{f['demands_published']} engine.demand in {f['demand_bursts']} bursts + {sum(f['selections'].values())} selections; "
        f"max engines seen **{f['max_engines_seen']}** (MAX_REPLICAS 4), {f['engines_at_end']} records = "
        f"{f['engine_processes_at_end']} processes (asserted equal), no duplicate port or name (asserted)"
    )


def _hostile(f: dict) -> str:
    sent = f["sent"]
    events = sum(v for k, v in sent.items() if k.startswith("event ") and "refused" not in k)
    requests = sum(v for k, v in sent.items() if k.startswith("request ") and "reply" not in k)
    http = sum(v for k, v in sent.items() if k.startswith("http "))
    codes = ", ".join(f"{k.split()[1]}×{v}" for k, v in sent.items() if k.startswith("http "))
    rejected = sum(f["events_rejected_by_reason"].values())
    return (
        f"{events} events, {requests} requests, {http} HTTP calls (statuses {codes}); {rejected} events rejected "
        f"and counted; records left: {f['engine_records']} engines, {f['stream_records']} streams, "
        f"**{len(f['undecodable'])} undecodable, {len(f['invariant_violations'])} invariant violations**"
    )


def _restart(f: dict) -> str:
    return (
        f"{_events(f)}; observed: everything down {f['down_s']} s with {f['streams_open_at_kill']} streams open, first selection "
        f"{f['first_selection_after_restart_s']} s after the restart; asserted: engines {len(f['engines_before'])} before → "
        f"{len(f['engines_after'])} after, same processes kept {len(f['engine_processes_kept'])}, new {len(f['engine_processes_new'])}"
    )


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value} s"


def _partition(f: dict) -> str:
    def cut(c: dict) -> str:
        replaced = (
            f"replacement healthy after {c['replacement_healthy_after_s']} s"
            if c["replacement_healthy_after_s"] is not None
            else "floors met without a replacement"
        )
        current = (
            f", every NATS node current {c['nats_current_after_heal_s']} s" if c["nats_current_after_heal_s"] else ""
        )
        return (
            f"{c['role']} ({c['host']}, {len(c['engines'])} engine(s)) cut {c['cut_s']} s: last selection naming "
            f"them {_seconds(c.get('last_selection_naming_it_s'))} after the cut, their records not `healthy` after "
            f"{c['out_of_selection_after_s']} s, selections naming them later than the bound after the stream takes "
            f"events again (+1 s): "
            f"**{c['selections_naming_it_after_bound']}**, events acked again after {c['events_acked_again_after_s']} s, "
            f"{replaced}, engines its agents stopped while cut: **{len(c['removed_while_cut'])}**; after healing records "
            f"converged in {c['records_converged_after_heal_s']} s{current}"
        )

    return (
        f"{_events(f)}; duplicate records **{f['duplicate_records']}**; "
        + "; ".join(cut(c) for c in f["cuts"])
        + f"; observed (asserted only to end, ≤ 45 s): longest engine without a record {f['engine_without_record_s']} s "
        f"(past a 4 s start), record without an engine {f['record_without_engine_s']} s (engine.registered/removed "
        f"wait for a stream leader); "
        f"selections failed "
        f"{f['selections_failed']} (retried), outages {f['selection_outages_s']} s"
    )


SCENARIOS = [
    Scenario(
        "1",
        "NATS restart",
        "SIGKILL nats-server under selections + stream events, restart on the same store: services reconnect, "
        "acked events applied exactly once (KV = sequential model), KV watchers resume (newcomer probed, on /api/live)",
        "test_nats_sigkill_and_restart_under_load_loses_nothing",
        "test_chaos_nats_restart.py",
        _nats_restart,
    ),
    Scenario(
        "2",
        "NATS cluster",
        "3 nodes (the shipped configs: role keys, TLS on client and route connections), stream + buckets R3; "
        "SIGKILL the ACE_EVENTS stream leader, restore, then the meta leader, "
        "under load: selections and events keep succeeding, nothing lost, every watch resumes",
        "test_cluster_survives_losing_a_node_then_the_meta_leader",
        "test_chaos_nats_cluster.py",
        _cluster,
    ),
    Scenario(
        "3",
        "Replica loss",
        "2 replicas of all six services; SIGKILL one of each under load: no selection lost beyond those in "
        "flight, probes and sweeps taken over within two intervals, survivor gateway answers",
        "test_losing_one_replica_of_each_service_under_load",
        "test_chaos_replica_loss.py",
        _replicas,
    ),
    Scenario(
        "4",
        "Engine faults at scale",
        "200 acesim engines, 10% hung, 5% flapping, some claimed: every selection reply checked "
        "against the truth; hung engines out within the DESIGN §5 bound; status changes justified by rise/fall",
        "test_two_hundred_engines_with_hung_and_flapping_ones",
        "test_chaos_engine_faults.py",
        _faults,
    ),
    Scenario(
        "5a",
        "Races: streams vs reaper, janitor, expiring reservations",
        "small pool that grows and shrinks; a quarter of "
        "stream.started sent around reservation expiry: no stream on a removed engine, no grant over the cap, ≤ MAX_REPLICAS",
        "test_stream_starts_race_reaper_janitor_and_expiring_reservations",
        "test_chaos_races.py",
        _races,
    ),
    Scenario(
        "5b",
        "Races: two provisioners on demand",
        "bursts of engine.demand heard by two provisioners at once: never more than MAX_REPLICAS engines, no duplicate",
        "test_two_provisioners_racing_on_demand_stay_within_max_replicas",
        "test_chaos_races.py",
        _provisioners,
    ),
    Scenario(
        "6",
        "Hostile input",
        "Hypothesis payloads on every event subject, request/reply endpoint and gateway HTTP endpoint: "
        "no crash, no 5xx, consumer keeps going, every KV record decodes and agrees with the others",
        "test_hostile_input_never_crashes_or_corrupts_records",
        "test_chaos_hostile.py",
        _hostile,
    ),
    Scenario(
        "7",
        "Whole-system restart",
        "SIGKILL every service and nats-server mid-load, start again: state recovered, "
        "engines re-adopted (same processes), no duplicate engine",
        "test_whole_system_restart_mid_load_recovers_state_and_engines",
        "test_chaos_full_restart.py",
        _restart,
    ),
    Scenario(
        "8",
        "Network partitions",
        "3 hosts (network namespaces), a NATS node each from deploy/nats/host.conf (R3), their own provisioner, "
        "janitor, reaper and acesim engines on the host's address, state-keeper + prober on two; load from a 4th "
        "namespace. Cut one host off (iptables DROP both ways) past the health bound, heal; then the host holding the "
        "ACE_EVENTS leader: nothing lost, its engines leave selection, replaced where the floors need it, its agents "
        "stop nothing, the fleet converges",
        "test_a_cut_off_host_does_no_harm_and_the_fleet_converges_after_healing",
        "test_chaos_partition.py",
        _partition,
    ),
]


def render() -> str:
    lines = [
        "| # | Scenario | What it checks | Figures from the last run | Result | Reproduce |",
        "|---|---|---|---|---|---|",
    ]
    for s in SCENARIOS:
        path = ARTIFACTS / f"{s.test}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            try:
                figures = s.figures(doc["figures"])
            except (KeyError, TypeError, ValueError) as exc:
                figures = f"(figures incomplete: {exc!r})"
            result = f"{doc['outcome']} ({doc['duration_s']} s, {doc['recorded_at']})"
        else:
            figures, result = "not run", "—"
        command = f"`.venv/bin/python -m pytest tests/reliability/{s.path}::{s.test}`"
        lines.append(f"| {s.number} | {s.title} | {s.checks} | {figures} | {result} | {command} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the table between the figures markers in this file")
    args = parser.parse_args(argv)
    table = render()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    text = args.write.read_text()
    if START not in text or END not in text:
        print(f"{args.write}: no {START} … {END} markers to replace", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.write.write_text(f"{head}{START}\n{table}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
