"""Scenario: one fleet on three hosts (network namespaces, tests/reliability/netns_hosts.py), a host cut
off from the others, healed, then the host holding the ACE_EVENTS leader cut off and healed.

Each host runs a NATS node from the shipped deploy/nats/host.conf (grants, TLS on client and
route connections; stream and buckets R3, made by `aceorch setup` as admin), its provisioner,
janitor and reaper (HOST_ID, ENGINE_HOST = its own address, local acesim engines), and h1 and
h2 a state-keeper and a prober each; every service connects to its own host's node. The load
(selections, stream events) runs in a fifth namespace (tests/reliability/partition_load.py)
and reports what it did and the engine records it sees; the test reads the hosts' runtimes
(state files, pids) from the root namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chaos_stack import HEALTH_BOUND_S, INTERVAL_S, RECHECK_S, TIMEOUT_S
from nats_cluster import INCLUDED, copy_shipped, make_keys
from netns_hosts import CLIENT, Network, unavailable
from support import ROOT, Processes, base_env, nats_server_binary, wait_until

from shared import auth
from shared.runtime.local import engine_id

HOSTS = ["h1", "h2", "h3"]
KEEPER_HOSTS = ("h1", "h2")  # state-keeper and prober replicas
FLOORS = {
    "MIN_REPLICAS": 3,
    "MIN_FREE_REPLICAS": 0,
    "MAX_REPLICAS": 5,
    "MIN_REPLICAS_PER_HOST": 1,
    "HOST_MAX_ENGINES": 2,
}
MAX_STREAMS = 10
UNHEALTHY_REPLACE_AFTER_S = 3.0
CUT_AT_LEAST_S = 2 * HEALTH_BOUND_S  # longer than the DESIGN §5 bound, with room to spare
STARTUP_ALLOWANCE_S = 4.0  # an engine may run unrecorded while it starts (acesim boots, is probed)
ROUTE_PING = ('ping_interval: "5s"', 'ping_interval: "1s"')  # host.conf's route liveness, scaled down
POLL_S = 0.2
# Health reaches the records through ACE_EVENTS and the state-keeper's consumer, replicated groups
# whose leader may be the host just cut: until the others elect one (nats-server's raft election
# timeout, 4-9 s, not configurable) no health event is stored or applied. So the DESIGN §5 bound
# holds from the election on: engines of a cut host leave selection within HEALTH_BOUND_S + ELECTION_S.
ELECTION_S = 9.0
RECORD_LAG_LIMIT_S = 45.0  # generous: a record never outlives its engine for good


@dataclass
class Fleet:
    tmp: Path
    processes: Processes
    net: Network
    nats: dict[str, object] = field(default_factory=dict)

    @property
    def keys(self) -> Path:
        return self.tmp / "nats-auth"

    def url(self, host: str | None = None) -> str:
        hosts = [host] if host else HOSTS
        return ",".join(f"nats://{self.net.address(h)}:4222" for h in hosts)

    def admin(self) -> dict[str, str]:
        tls = self.keys / "tls"
        return {
            "NATS_URL": self.url(),
            "NATS_NKEY": str(auth.key_path(self.keys, auth.ADMIN)),
            "NATS_TLS_CA": str(tls / "ca.pem"),
            "NATS_TLS_CERT": str(tls / "admin.pem"),
            "NATS_TLS_KEY": str(tls / "admin.key"),
            "NATS_REPLICAS": "3",
        }

    def state_dir(self, host: str) -> Path:
        return self.tmp / f"engines-{host}"

    def start_nats(self) -> None:
        make_keys(self.keys, [*(self.net.address(h) for h in HOSTS), "127.0.0.1"])
        routes = ", ".join(f"nats-route://{self.net.address(h)}:6222" for h in HOSTS)
        for host in HOSTS:
            config = copy_shipped(
                self.tmp, [*INCLUDED, "host.conf"], dict([ROUTE_PING]), self.tmp / "data" / host, f"host-{host}.conf"
            )
            env = {"NATS_NODE_NAME": host, "NATS_ADDRESS": self.net.address(host), "NATS_ROUTES": f"[{routes}]"}
            argv = self.net.exec_argv(host, [nats_server_binary(), "-c", str(config)])
            self.nats[host] = self.processes.start(f"nats-{host}", argv, env)
        self.processes.keys, self.processes.tls = self.keys, self.keys / "tls"

    def setup(self) -> None:
        """`aceorch setup` as admin, from the client's namespace, once the cluster has a meta leader."""
        argv = self.net.exec_argv(CLIENT, [sys.executable, "-m", "services.cli", "setup"])
        env = {**os.environ, **self.admin(), "NATS_CONNECT_TIMEOUT_S": "5"}
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return
            assert time.monotonic() < deadline, f"aceorch setup kept failing: {done.stderr[-2000:]}"
            time.sleep(1)

    def start_services(self) -> None:
        for host in HOSTS:
            env = base_env(
                self.url(host),
                NATS_REPLICAS=3,
                HEALTH_CHECK_INTERVAL_S=INTERVAL_S,
                HEALTH_CHECK_TIMEOUT_S=TIMEOUT_S,
                HEALTH_RECHECK_S=RECHECK_S,
                AUTOSCALE_INTERVAL_S=INTERVAL_S,
                HOST_ID=host,
                ENGINE_HOST=self.net.address(host),
                ENGINE_RUNTIME="local",
                ENGINE_STATE_DIR=self.state_dir(host),
                ENGINE_PORT_RANGE="40000-40009",  # every host has its own ports: they repeat across hosts
                ENGINE_START_TIMEOUT_S=20,
                ENGINE_GRACE_PERIOD_S=3,
                UNHEALTHY_REPLACE_AFTER_S=UNHEALTHY_REPLACE_AFTER_S,
                MAX_STREAMS_PER_ENGINE=MAX_STREAMS,
                RESERVATION_TTL_S=5,
                UNKNOWN_ENGINE_RETRY_S=5,
                NATS_CONNECT_TIMEOUT_S=10,
                **FLOORS,
            )
            services = ["provisioner", "janitor", "reaper"]
            if host in KEEPER_HOSTS:
                services = ["state_keeper", "prober", *services]
            for service in services:
                self.processes.service(service, env, prefix=self.net.exec_argv(host, []))

    def start_load(self, via: str) -> Path:
        """The load, a client of `via`'s node only: nats-py notices a node gone silent only after two
        unanswered pings (2 minutes each by default) and then waits out the TLS close (30 s) before
        it reconnects, which would measure the client, not the fleet."""
        directory = self.tmp / "load"
        directory.mkdir()
        env = {
            **self.admin(),
            "NATS_URL": self.url(via),
            "MAX_STREAMS_PER_ENGINE": str(MAX_STREAMS),
            "RESERVATION_TTL_S": "5",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'reliability'}",
        }
        argv = [sys.executable, str(ROOT / "tests" / "reliability" / "partition_load.py"), str(directory)]
        self.processes.start("load", self.net.exec_argv(CLIENT, argv), env)
        return directory

    def live_engines(self, host: str) -> dict[str, int]:
        """{container_id: pid} of the engines running on `host`, from its runtime's state files."""
        found = {}
        for path in self.state_dir(host).glob("*.json"):
            try:
                entry = json.loads(path.read_text())
                cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes()
            except (OSError, ValueError, KeyError):
                continue
            if str(entry["port"]).encode() in cmdline:
                found[engine_id(entry["port"], entry.get("id_host", ""))] = entry["pid"]
        return found

    def started_at(self, host: str) -> dict[str, float]:
        found = {}
        for path in self.state_dir(host).glob("*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            found[engine_id(entry["port"], entry.get("id_host", ""))] = entry["started_at"]
        return found

    def all_live(self) -> dict[str, str]:
        """{container_id: host} of every running engine."""
        return {cid: host for host in HOSTS for cid in self.live_engines(host)}

    def step_down(self) -> None:
        """Ask the ACE_EVENTS leader to hand over (admin, from the client's namespace)."""
        code = (
            "import asyncio\n"
            "from shared.bus import connect\n"
            "from shared.config import load_config\n"
            "async def main():\n"
            "    bus = await connect(load_config(), 'partition-step-down')\n"
            "    await bus.nc.request('$JS.API.STREAM.LEADER.STEPDOWN.ACE_EVENTS', b'', timeout=5)\n"
            "    await bus.close()\n"
            "asyncio.run(main())\n"
        )
        argv = self.net.exec_argv(CLIENT, [sys.executable, "-c", code])
        env = {**os.environ, **self.admin(), "PYTHONPATH": str(ROOT)}
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]

    def current(self, host: str) -> bool:
        """The host's NATS node is current with the cluster: every stream and consumer replica caught
        up (its /healthz). A node just healed takes a while; cut another meanwhile and the groups it
        lags in have no quorum."""
        return self.monitor(host, "/healthz").get("status") == "ok"

    def monitor(self, host: str, path: str) -> dict:
        argv = self.net.exec_argv(host, ["curl", "-s", "--max-time", "2", f"http://127.0.0.1:8222{path}"])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {}

    def stop(self) -> None:
        """Services and the load, then every engine (by the pid in its state file), then NATS."""
        nats = set(map(id, self.nats.values()))
        services = [proc for proc in self.processes.started if id(proc) not in nats]
        for proc in services:  # all at once: SIGTERM now, then wait for each
            if proc.alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in services:
            proc.stop()
        for host in HOSTS:
            for pid in self.live_engines(host).values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.nats.values():
            proc.stop()  # type: ignore[attr-defined]


class Watch:
    """Samples the load's view of the records against the hosts' runtimes every POLL_S."""

    def __init__(self, fleet: Fleet, load: Path) -> None:
        self.fleet = fleet
        self.load = load
        self.unrecorded: dict[str, float] = {}  # engine running without a record: since (monotonic)
        self.orphaned: dict[str, float] = {}  # record without an engine: since
        self.longest = {"engine_without_record_s": 0.0, "record_without_engine_s": 0.0}
        self.last: dict = {}
        self.timeline = fleet.tmp / "watch-timeline.log"  # copied next to the figures when the test fails
        self._seen: tuple = ()
        self._task: asyncio.Task | None = None

    def progress(self) -> dict:
        try:
            self.last = json.loads((self.load / "progress.json").read_text())
        except (OSError, ValueError):
            pass
        return self.last

    def sample(self) -> None:
        now, wall = time.monotonic(), time.time()
        records = self.progress().get("engines", {})
        live = self.fleet.all_live()
        started = {cid: at for host in HOSTS for cid, at in self.fleet.started_at(host).items()}
        unrecorded = {c for c in live if c not in records and wall - started.get(c, wall) > STARTUP_ALLOWANCE_S}
        orphaned = {c for c in records if c not in live}
        view = (sorted((c, r["health"]) for c, r in records.items()), sorted(live), sorted(self.fleet.net.cut_hosts))
        if view != self._seen:
            self._seen = view
            with self.timeline.open("a") as out:
                out.write(
                    f"{time.strftime('%H:%M:%S')}.{int(wall * 1000) % 1000:03d} records {view[0]} live {view[1]} cut {sorted(view[2])}\n"
                )
        for kind, seen, current in (
            ("engine_without_record_s", self.unrecorded, unrecorded),
            ("record_without_engine_s", self.orphaned, orphaned),
        ):
            for cid in list(seen):
                if cid not in current:
                    del seen[cid]
            for cid in current:
                since = seen.setdefault(cid, now)
                self.longest[kind] = max(self.longest[kind], round(now - since, 2))

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def records(self) -> dict[str, dict]:
        return self.progress().get("engines", {})

    def converged(self) -> bool:
        """Every running engine recorded, every record an engine that runs, all healthy."""
        records, live = self.records(), self.fleet.all_live()
        return set(records) == set(live) and all(r["health"] == "healthy" for r in records.values())


async def test_a_cut_off_host_does_no_harm_and_the_fleet_converges_after_healing(processes, tmp_path, figures):
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the partition tier cannot run under CI: {reason}")
        pytest.skip(reason)
    net = Network(HOSTS)
    fleet = Fleet(tmp_path, processes, net)
    watch: Watch | None = None
    try:
        net.create()
        fleet.start_nats()
        await asyncio.to_thread(fleet.setup)
        fleet.start_services()
        # Cut first a host that does not hold the stream leader, then the leader's; the load uses the
        # third host's node, never cut.
        leader = await wait_until(lambda: _stream_leader(fleet), timeout=30, what="the stream leader")
        first = next(h for h in reversed(HOSTS) if h != leader)
        via = next(h for h in HOSTS if h not in (leader, first))
        load = fleet.start_load(via)
        watch = Watch(fleet, load)
        watch.start()
        await wait_until(lambda: watch.progress().get("events_acked", 0) > 100, timeout=90, what="the load under way")
        await wait_until(watch.converged, timeout=60, what="a settled fleet")
        layout = {host: sorted(fleet.live_engines(host)) for host in HOSTS}
        assert all(layout.values()), f"every host runs engines (MIN_REPLICAS_PER_HOST=1): {layout}"

        cuts: list[dict] = []
        figures["cuts"] = cuts  # filled as they happen: a failed round still shows the ones before
        cuts.append(await _cut_and_heal(fleet, watch, first, "a host"))
        leader = await wait_until(lambda: _stream_leader(fleet), timeout=30, what="the stream leader")
        for _ in range(5):  # leadership moves in an election: keep it off the load's node
            if leader != via:
                break
            await asyncio.to_thread(fleet.step_down)
            await wait_until(lambda: _stream_leader(fleet) not in (None, via), timeout=15, what="a new leader")
            leader = await wait_until(lambda: _stream_leader(fleet), timeout=30, what="the stream leader")
        assert leader != via, f"the stream leader stays on {via}, the node the load uses"
        cuts.append(await _cut_and_heal(fleet, watch, leader, "the stream leader's host", then_current=False))

        (load / "stop").touch()
        await wait_until(lambda: (load / "result.json").exists(), timeout=120, what="the load's result")
        result = json.loads((load / "result.json").read_text())
        selections = result.pop("selections")
        for cut in cuts:
            named = [
                at - cut["cut_at"]
                for at, cid in selections
                if cid in cut["engines"] and cut["cut_at"] < at < cut["healed_at"]
            ]
            cut["last_selection_naming_it_s"] = round(max(named), 2) if named else None
            cut["selections_naming_it_after_bound"] = sum(
                1
                for at, cid in selections
                if cid in cut["engines"] and cut["cut_at"] + _selection_bound(cut) < at < cut["healed_at"]
            )
        await watch.stop()
        records = result.pop("engines")
        addresses = [(r["host_id"], cid.rsplit("-", 1)[1]) for cid, r in records.items()]
        duplicates = len(addresses) - len(set(addresses))

        figures.update(
            hosts=len(HOSTS),
            health_bound_s=HEALTH_BOUND_S,
            cuts=[{k: v for k, v in cut.items() if k not in ("cut_at", "healed_at")} for cut in cuts],
            duplicate_records=duplicates,
            **watch.longest,
            **{k: v for k, v in result.items() if k not in ("lost_detail", "duplicate_detail")},
        )
        assert result["events_lost"] == 0, result["lost_detail"]
        assert result["events_applied"] == result["events_acked"], result
        assert result["duplicates"] == 0 and result["stray_streams"] == 0 and result["stored_twice"] == 0, result
        assert not result["invariant_problems"], result["invariant_problems"]
        assert not result["bad_reply_detail"], result["bad_reply_detail"]
        assert duplicates == 0, records
        for cut in cuts:
            assert cut["selections_naming_it_after_bound"] == 0, cut
            assert not cut["removed_while_cut"], cut
        # With the stream writable, records follow engines within a sweep; an engine.registered or
        # engine.removed published while ACE_EVENTS has no leader (an election, a healed node's catch-up)
        # waits for one (RELIABILITY.md). Reported; held only to ending (and the fleet converged).
        assert watch.longest["engine_without_record_s"] <= RECORD_LAG_LIMIT_S, watch.longest
        assert watch.longest["record_without_engine_s"] <= RECORD_LAG_LIMIT_S, watch.longest
        crashed = [p.name for p in processes.started if p.name != "load" and not p.alive()]
        assert not crashed, crashed
    finally:
        if watch is not None:
            await watch.stop()
        fleet.stop()
        failed = net.delete()
        assert not failed, failed


async def _cut_and_heal(fleet: Fleet, watch: Watch, host: str, role: str, then_current: bool = True) -> dict:
    """Cut `host` off; wait until its engines are out of selection and replaced where the floors need
    it; heal; wait until the fleet converges (and with `then_current` until every NATS node is current,
    as another cut needs). The figures of the round."""
    engines = set(fleet.live_engines(host))
    acked = watch.progress()["events_acked"]
    fleet.net.cut(host)
    cut_at, cut = time.time(), time.monotonic()

    def replacement_healthy() -> bool:
        """An engine started elsewhere since the cut is healthy (ids of removed engines come back: by start)."""
        started = {cid: at for h in HOSTS if h != host for cid, at in fleet.started_at(h).items()}
        return any(started.get(cid, 0.0) > cut_at and r["health"] == "healthy" for cid, r in watch.records().items())

    async def out_of_selection() -> float:
        await wait_until(
            lambda: all(watch.records().get(c, {}).get("health") != "healthy" for c in engines),
            timeout=60,
            interval=0.05,
            what=f"{host}'s engines out of selection",
        )
        return time.monotonic() - cut

    async def events_again() -> float:
        await wait_until(
            lambda: watch.progress()["events_acked"] > acked + 20, timeout=60, what=f"events acked with {host} cut"
        )
        return time.monotonic() - cut

    out_s, events_s = await asyncio.gather(out_of_selection(), events_again())
    others = [c for c, r in watch.records().items() if r["host_id"] != host]
    replaced_s = None
    if len(others) < FLOORS["MIN_REPLICAS"]:  # the floors need engines elsewhere
        await wait_until(replacement_healthy, timeout=60, what=f"a replacement for {host}'s engines")
        replaced_s = round(time.monotonic() - cut, 2)
    await asyncio.sleep(max(0.0, CUT_AT_LEAST_S - (time.monotonic() - cut)))
    removed = sorted(engines - set(fleet.live_engines(host)))  # its agents must have stopped nothing
    fleet.net.heal(host)
    healed_at, healed = time.time(), time.monotonic()
    await wait_until(watch.converged, timeout=60, what=f"the fleet converged after healing {host}")
    records_s = time.monotonic() - healed
    if then_current:
        await wait_until(
            lambda: all(fleet.current(h) for h in HOSTS), timeout=90, interval=0.5, what=f"{host}'s node current"
        )
    return {
        "host": host,
        "role": role,
        "engines": sorted(engines),
        "cut_at": cut_at,
        "healed_at": healed_at,
        "cut_s": round(healed - cut, 2),
        "out_of_selection_after_s": round(out_s, 2),
        "events_acked_again_after_s": round(events_s, 2),
        "replacement_healthy_after_s": replaced_s,
        "removed_while_cut": removed,
        "records_converged_after_heal_s": round(records_s, 2),
        "nats_current_after_heal_s": round(time.monotonic() - healed, 2) if then_current else None,
        "engines_after": len(watch.records()),
    }


def _selection_bound(cut: dict) -> float:
    """After the cut, when no selection may name its engines any more: the DESIGN §5 bound from the
    moment the stream takes events again (at least one election), plus 1 s for the event → KV → view
    pipeline on a shared 2-core machine (as scenario 4)."""
    return HEALTH_BOUND_S + max(ELECTION_S, cut["events_acked_again_after_s"]) + 1.0


def _stream_leader(fleet: Fleet) -> str | None:
    """The ACE_EVENTS leader as a node's monitor port reports it (None while an election runs)."""
    for host in HOSTS:
        for account in fleet.monitor(host, "/jsz?streams=true").get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream.get("name") == "ACE_EVENTS":
                    leader = (stream.get("cluster") or {}).get("leader")
                    if leader in HOSTS:
                        return leader
    return None
