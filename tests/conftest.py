"""Shared fixtures: a real nats-server per test and tracked child processes."""

from __future__ import annotations

import os
from datetime import timedelta

import nats
import pytest
from hypothesis import Phase, settings
from support import NatsServer, Processes, collect_dropped_connections, create_open_layout, free_port

# Hypothesis' 200 ms default deadline fails examples on a shared 2-core machine whenever another
# process takes the CPU; 5 s still flags a step that is pathologically slow.
settings.register_profile("aceorch", deadline=timedelta(seconds=5))
# For mutation runs (`make mutate` passes --hypothesis-profile=mutate): a mutant is caught once a test
# fails, and shrinking the failing example of a stateful machine takes minutes per mutant.
settings.register_profile(
    "mutate", parent=settings.get_profile("aceorch"), phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
settings.load_profile("aceorch")


def pytest_collection_modifyitems(config, items):
    # CI must run every tier: a tier that cannot run there is a failure, not a skip.
    if os.environ.get("CI") == "true" and not config.pluginmanager.has_plugin("no-skips-in-ci"):
        config.pluginmanager.register(_NoSkipsInCI(), "no-skips-in-ci")
    # The chaos scenarios and the long ones check bounds under a load they make themselves;
    # `make test` runs them after the parallel part, one at a time, so no other test adds to it.
    for item in items:
        if "reliability" in item.path.parts or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.alone)


class _NoSkipsInCI:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.skipped and not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI (CI=true forbids skipping a tier): {report.longrepr}"


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def nats_server(tmp_path, processes) -> NatsServer:
    """A nats-server enforcing the role grants (DESIGN §11) on the services a test starts: each gets
    its role's key (processes.service) and binds to the layout made here, as `aceorch setup` would.
    ACEORCH_TEST_AUTH=0 runs the old open server."""
    server = NatsServer(port=free_port(), store=tmp_path / "jetstream", processes=processes)
    if os.environ.get("ACEORCH_TEST_AUTH", "1") != "0":
        processes.keys = server.with_role_keys(tmp_path / "auth")
    server.start()
    if server.keys is not None:
        create_open_layout(server.url)
    return server


@pytest.fixture
async def nc(nats_server):
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()
    collect_dropped_connections()
