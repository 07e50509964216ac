"""The CLI's pure parts: relative times, sizes, the engines table, log prefixes, `up`'s plans."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.cli.__main__ import build_parser
from services.cli.commands import end_report
from services.cli.demo import parse_span
from services.cli.logs import Output, prefix_line
from services.cli.plan import RESTART_LIMIT, STABLE_AFTER_S, metrics_ports, plan_restart, restart_delay
from services.cli.proxy import EndResult, Playing, decide_shared
from services.cli.table import ago, engines_table, human_bytes, render_table, speed_cell, streams_table
from services.cli.up import SERVICES, UpError, UpOptions, nats_argv, options_from, service_env
from shared.config import load_config
from shared.schemas import Claim, EngineRecord, PlaybackStats, StreamRecord

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (None, "Never"),
        (timedelta(seconds=-5), "just now"),  # clocks differ a little between hosts
        (timedelta(0), "just now"),
        (timedelta(seconds=1), "1s ago"),
        (timedelta(seconds=59), "59s ago"),
        (timedelta(minutes=5), "5m ago"),
        (timedelta(minutes=5, seconds=59), "5m ago"),
        (timedelta(hours=3, minutes=1), "3h ago"),
        (timedelta(days=2, hours=23), "2d ago"),
    ],
)
def test_ago_says_how_long_since(delta, text):
    when = None if delta is None else NOW - delta
    assert ago(when, NOW) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (64 * 1024**2, "64.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),
    ],
)
def test_human_bytes(size, text):
    assert human_bytes(size) == text


def test_render_table_aligns_columns_without_trailing_blanks():
    text = render_table(("A", "LONG HEADER"), [("wide cell", "x"), ("y", "")])
    assert text.splitlines() == [
        "A          LONG HEADER",
        "wide cell  x",
        "y",
    ]


def engine(**fields) -> EngineRecord:
    base = dict(container_id="0123456789abcdef0123", container_name="acestream-1", host="127.0.0.1", port=40001)
    return EngineRecord(**{**base, **fields})


def test_engines_table_shows_the_columns_operators_read():
    records = [
        engine(
            health_status="healthy",
            streams=["s1", "s2"],
            last_stream_usage=NOW - timedelta(minutes=5),
            cache_size_bytes=2 * 1024**2,
            reservations={"r1": NOW + timedelta(seconds=10), "old": NOW - timedelta(seconds=1)},
        ),
        engine(
            container_id="local-40002",
            container_name="acestream-2",
            port=40002,
            health_status="unhealthy",
            claim=Claim(claim_id="c", purpose="clean", holder="janitor", expires_at=NOW + timedelta(seconds=30)),
        ),
    ]
    lines = engines_table(records, NOW).splitlines()
    assert lines[0].split() == ["NAME", "ID", "ADDRESS", "HEALTH", "STATE", "STREAMS", "LAST", "USED", "CACHE"]
    assert lines[1].split() == [
        "acestream-1",
        "0123456789ab",
        "127.0.0.1:40001",
        "healthy",
        "active",
        "2",
        "(+1",
        "reserved)",
        "5m",
        "ago",
        "2.0",
        "MiB",
    ]
    assert lines[2].split() == [
        "acestream-2",
        "local-40002",
        "127.0.0.1:40002",
        "unhealthy",
        "cleaning",
        "0",
        "Never",
        "-",
    ]


def test_engines_table_lists_engines_in_name_order():
    names = ["acestream-10", "manual", "acestream-2", "acestream-1"]
    records = [engine(container_id=f"id-{name}", container_name=name) for name in names]
    rows = engines_table(records, NOW).splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["acestream-1", "acestream-2", "acestream-10", "manual"]


def test_engines_table_says_when_there_are_none():
    assert engines_table([], NOW) == "no engines registered"


def test_engines_on_more_than_one_host_get_a_host_column_grouped_by_host_and_a_filter():
    records = [
        engine(container_id=f"id-{n}-{host}", container_name=f"acestream-{n}", host_id=host)
        for n, host in ((2, "rack-b"), (1, "rack-b"), (3, "rack-a"))
    ]
    rows = [row.split()[:2] for row in engines_table(records, NOW).splitlines()]
    assert rows == [["HOST", "NAME"], ["rack-a", "acestream-3"], ["rack-b", "acestream-1"], ["rack-b", "acestream-2"]]
    one_host = engines_table(records, NOW, host="rack-b").splitlines()
    assert one_host[0].split()[0] == "NAME" and [row.split()[0] for row in one_host[1:]] == [
        "acestream-1",
        "acestream-2",
    ]
    assert engines_table(records, NOW, host="rack-z") == "no engines on host rack-z"
    # Records from before hosts were recorded, next to recorded ones: a host of their own, shown as '-'.
    mixed = engines_table([*records[:1], engine(container_id="old", container_name="acestream-9")], NOW)
    assert [row.split()[0] for row in mixed.splitlines()[1:]] == ["-", "rack-b"]


def test_streams_table_shows_peers_and_speed_once_the_proxy_reported_them():
    figures = PlaybackStats(status="dl", peers=12, speed_down=640, speed_up=31, reported_at=NOW)
    records = [
        StreamRecord(
            stream_id="s2",
            container_id="0123456789abcdef0123",
            content_key="news",
            proxy="proxy-1",
            started_at=NOW - timedelta(seconds=42),
        ),
        StreamRecord(
            stream_id="s1",
            container_id="local-40002",
            content_key="x" * 40,
            proxy="proxy-1",
            started_at=NOW - timedelta(minutes=3),
            stats=figures,
        ),
        StreamRecord(stream_id="s3", status="ended", reason="proxy_lost", ended_at=NOW),
    ]
    lines = streams_table(records, NOW).splitlines()
    assert lines[0].split() == ["STREAM", "ENGINE", "CONTENT", "STATUS", "PEERS", "DOWN/UP", "PROXY", "STARTED"]
    assert lines[1].split() == [
        "s1",
        "local-40002",
        "x" * 21 + "...",
        "started",
        "12",
        "640/31",
        "KiB/s",
        "proxy-1",
        "3m",
        "ago",
    ]
    assert lines[2].split() == ["s2", "0123456789ab", "news", "started", "-", "-", "proxy-1", "42s", "ago"]
    assert lines[3].split() == ["s3", "-", "-", "ended", "(proxy_lost)", "-", "-", "-", "Never"]


@pytest.mark.parametrize(
    ("figures", "text"),
    [
        (None, "-"),
        (PlaybackStats(peers=3), "-"),
        (PlaybackStats(speed_down=0, speed_up=0), "0/0 KiB/s"),
        (PlaybackStats(speed_down=5), "5/? KiB/s"),
    ],
)
def test_speed_cell(figures, text):
    assert speed_cell(figures) == text


def test_streams_table_says_when_there_are_none():
    assert streams_table([], NOW) == "no streams"


def test_the_streams_command_lists_started_ones_unless_asked_for_all():
    assert build_parser().parse_args(["streams"]).all is False
    args = build_parser().parse_args(["streams", "--all", "--json"])
    assert (args.run, args.all, args.json) == ("streams", True, True)


def test_prefix_line_pads_names_and_colors_only_when_asked():
    assert prefix_line("prober", "hello", 12) == "prober       | hello"
    colored = prefix_line("prober", "2025 ERROR prober: boom", 12, "36")
    assert colored.startswith("\033[36mprober       |\033[0m ")
    assert "\033[31m2025 ERROR prober: boom\033[0m" in colored


def test_output_writes_one_prefixed_line_per_call_without_color_on_a_pipe():
    stream = io.StringIO()
    out = Output(["state-keeper", "nats"], stream)
    out.emit("nats", "ready")
    out.say("up")
    assert out.flush()
    assert stream.getvalue() == "nats         | ready\naceorch      | up\n"


def options(tmp_path: Path, **changes) -> UpOptions:
    base = dict(
        data_dir=tmp_path, nats_port=4999, gateway_port=8999, runtime="local", keep_engines=False, stop_timeout_s=5
    )
    return UpOptions(**{**base, **changes})


def test_service_env_points_services_at_our_nats_and_data_dir(tmp_path):
    env = service_env(
        {"NATS_URL": "nats://elsewhere:4222", "MIN_REPLICAS": "3", "ENGINE_RUNTIME": "docker"}, options(tmp_path)
    )
    assert env["NATS_URL"] == "nats://127.0.0.1:4999"
    assert env["GATEWAY_PORT"] == "8999"
    assert env["ENGINE_RUNTIME"] == "local"
    assert env["ENGINE_STATE_DIR"] == str(tmp_path / "engines")
    assert env["MIN_REPLICAS"] == "3"  # everything else passes through
    config = load_config(env)
    assert (config.nats_url, config.gateway_port, config.nats_replicas) == ("nats://127.0.0.1:4999", 8999, 1)
    # Each service its own role key; `up` itself, as a client, the operator's.
    assert config.nats_nkey == str(tmp_path / "auth" / "operator.nk")
    keyed = {name: service_env({"NATS_NKEY": "mine.nk"}, options(tmp_path), name)["NATS_NKEY"] for _, name in SERVICES}
    assert keyed == {name: str(tmp_path / "auth" / f"{name}.nk") for _, name in SERVICES}


def test_nats_argv_is_loopback_with_jetstream_under_the_data_dir(tmp_path):
    argv = nats_argv("/bin/nats-server", options(tmp_path))
    assert argv[0] == "/bin/nats-server"
    assert argv[argv.index("--addr") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "4999"
    assert "--jetstream" in argv
    assert argv[argv.index("--store_dir") + 1] == str(tmp_path / "nats")
    assert argv[argv.index("--config") + 1] == str(tmp_path / "auth" / "auth.conf")  # role keys only


def test_services_stop_in_reverse_start_order():
    names = [name for _, name in SERVICES]
    assert names[0] == "state-keeper" and names[-1] == "gateway"
    assert [name for _, name in reversed(SERVICES)] == [
        "gateway",
        "proxy",
        "reaper",
        "janitor",
        "provisioner",
        "prober",
        "state-keeper",
    ]


def test_restart_delay_backs_off_to_a_ceiling():
    assert [restart_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crash_loop_trips_the_limit_and_a_stable_run_resets_the_backoff():
    restarts, delays = 0, []
    while (plan := plan_restart(restarts, uptime_s=0.5)).delay_s is not None:
        restarts = plan.restarts
        delays.append(plan.delay_s)
    assert delays == [1, 2, 4, 8, 16] and len(delays) == RESTART_LIMIT
    # Crashes an hour apart: each one waits the first delay again, and never trips the limit.
    assert [plan_restart(n, uptime_s=3600).delay_s for n in range(8)] == [1.0] * 8
    assert plan_restart(3, STABLE_AFTER_S) == plan_restart(0, 0)
    assert plan_restart(3, STABLE_AFTER_S - 1).delay_s == 8


def test_each_service_gets_its_own_metrics_port(tmp_path):
    assert metrics_ports({}) == {} and metrics_ports({"METRICS_PORT": "0"}) == {}
    ports = metrics_ports({"METRICS_PORT": "9100"})
    assert sorted(ports.values()) == list(range(9100, 9100 + len(SERVICES)))
    env = {"METRICS_PORT": "9100"}
    given = {name: service_env(env, options(tmp_path), name).get("METRICS_PORT") for _, name in SERVICES}
    assert len(set(given.values())) == len(SERVICES) and given["state-keeper"] == "9100"
    assert "METRICS_PORT" not in service_env(env, options(tmp_path))  # only a named service gets one
    for bad in ("x", "65535", "-3"):
        with pytest.raises(UpError, match="METRICS_PORT") as raised:
            metrics_ports({"METRICS_PORT": bad})
        assert raised.value.code == 2


def playing(stream_id: str, container_id: str, content_key: str) -> Playing:
    engine = EngineRecord(container_id=container_id, container_name=container_id, host="127.0.0.1", port=1)
    return Playing(stream_id, content_key, engine, False, "http://x/play", None, "http://x/cmd")


def test_sharing_is_decided_from_this_clients_streams_then_kv_and_unknown_means_maybe():
    mine = playing("a", "e1", "chan")
    assert decide_shared("a", "e1", "chan", [mine, playing("b", "e1", "chan")]) is True  # no KV needed
    assert decide_shared("a", "e1", "chan", [mine, playing("b", "e2", "chan")]) is None  # KV not read: unknown
    assert decide_shared("a", "e1", "chan", [mine], others=None) is None
    other = StreamRecord(stream_id="b", container_id="e1", content_key="chan", status="started")
    assert decide_shared("a", "e1", "chan", [], [other]) is True
    assert (
        decide_shared("a", "e1", "chan", [], [StreamRecord(stream_id="b", container_id="e1", content_key="other")])
        is False
    )
    assert (
        decide_shared(
            "a", "e1", "chan", [], [StreamRecord(stream_id="b", container_id="e1", content_key="chan", status="ended")]
        )
        is False
    )
    assert decide_shared("a", "e1", "chan", [], []) is False


def test_stream_end_says_when_the_state_keeper_will_apply_the_end_later():
    started = StreamRecord(stream_id="s", container_id="e1", content_key="c", status="started")
    lines = end_report("s", EndResult(started, shared=False, session_stopped=True), keeper_up=False)
    assert lines[0] == "stream s ended on e1"
    assert "the state-keeper will apply it when it is back" in lines[-1]
    assert not any("state-keeper will apply" in line for line in end_report("s", EndResult(started, False, True), True))
    unknown = end_report("s", EndResult(started, shared=None, session_stopped=False), keeper_up=True)
    assert "engine session left running" in unknown[1]
    assert "stored anyway" in end_report("s", EndResult(None, None, False), True)[0]


def up_args(**changes) -> argparse.Namespace:
    base = dict(data_dir="data", nats_port=None, gateway_port=None, runtime=None, keep_engines=False, stop_timeout=10.0)
    return argparse.Namespace(**{**base, **changes})


def test_up_options_come_from_flags_then_environment_then_defaults():
    assert options_from(up_args(), {}).nats_port == 4222
    assert options_from(up_args(), {}).gateway_port == 8000
    assert options_from(up_args(), {}).runtime == "local"
    env = {"NATS_PORT": "5222", "GATEWAY_PORT": "9000", "ENGINE_RUNTIME": "docker"}
    from_env = options_from(up_args(), env)
    assert (from_env.nats_port, from_env.gateway_port, from_env.runtime) == (5222, 9000, "docker")
    flagged = options_from(up_args(nats_port=6222, runtime="local"), env)
    assert (flagged.nats_port, flagged.runtime) == (6222, "local")
    assert options_from(up_args(data_dir="x"), {}).data_dir.is_absolute()


@pytest.mark.parametrize("raw", ["http", "0", "70000"])
def test_a_bad_port_is_refused_naming_the_variable(raw):
    with pytest.raises(UpError, match="NATS_PORT"):
        options_from(up_args(), {"NATS_PORT": raw})


def test_parse_span():
    assert parse_span("10-40") == (10.0, 40.0)
    assert parse_span("5") == (5.0, 5.0)
    for bad in ("x", "40-10", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_span(bad)


def test_parser_knows_every_command():
    parser = build_parser()
    assert parser.parse_args(["up", "--runtime", "docker"]).runtime == "docker"
    start = parser.parse_args(["stream", "start", "chan", "--stream-id", "s1", "--nats-url", "nats://127.0.0.1:1"])
    assert (start.run, start.content, start.stream_id, start.nats_url) == (
        "stream_start",
        "chan",
        "s1",
        "nats://127.0.0.1:1",
    )
    assert parser.parse_args(["stream", "end", "s1"]).run == "stream_end"
    assert parser.parse_args(["select"]).content is None
    assert parser.parse_args(["demo", "--watch", "1-2"]).watch == (1.0, 2.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["stream"])
