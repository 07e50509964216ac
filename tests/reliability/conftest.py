"""Fixtures for the reliability scenarios: a `Stack` of real processes and a figures recorder.

Each scenario writes what it measured to test-artifacts/reliability/<test>.json (with
its outcome); `python -m tests.reliability.report` renders RELIABILITY.md's table from
them. When a scenario fails, the logs of every process it started are copied next to
its figures.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from chaos_stack import Stack
from support import ROOT, collect_dropped_connections

ARTIFACTS = ROOT / "test-artifacts" / "reliability"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
async def stack(tmp_path, processes):
    built = Stack(tmp_path, processes)
    yield built
    await built.close_clients()
    collect_dropped_connections()
    built.stop_all()


@pytest.fixture
def figures(request, tmp_path):
    """A dict the scenario fills with what it measured; written out with the outcome."""
    measured: dict = {}
    started = time.monotonic()
    yield measured
    call = getattr(request.node, "rep_call", None)
    outcome = call.outcome if call is not None else "error"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name
    document = {
        "test": request.node.nodeid,
        "outcome": outcome,
        "duration_s": round(time.monotonic() - started, 1),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": measured,
    }
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    if outcome != "passed":
        logs = ARTIFACTS / "logs" / name
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for path in Path(tmp_path).rglob("*.log"):
            shutil.copy(path, logs / path.name)
