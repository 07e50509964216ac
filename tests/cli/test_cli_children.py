"""`up`'s process handling with real processes: output pump, bounded stop, orphan adoption."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

from services.cli.children import Child, alive

PY = sys.executable


async def test_a_child_s_lines_are_emitted_with_its_name_and_it_stops_on_sigterm():
    lines: list[tuple[str, str]] = []
    script = "import sys, time\nprint('hello', flush=True)\nprint('oops', file=sys.stderr, flush=True)\ntime.sleep(60)"
    child = Child("worker", [PY, "-c", script], {}, lambda name, line: lines.append((name, line)))
    await child.start()
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    code = await child.stop(timeout_s=5)
    assert sorted(lines) == [("worker", "hello"), ("worker", "oops")]
    assert code == -15 and not child.running and child.returncode == -15


def test_a_child_never_started_has_no_exit_code():
    # up reports nats-server's exit code through this: before a start there is none (not an AttributeError).
    child = Child("never", [PY, "-c", "pass"], {}, lambda name, line: None)
    assert child.returncode is None and not child.running


async def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    notes: list[str] = []
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    )
    child = Child("stubborn", [PY, "-c", script], {}, lambda name, line: notes.append(line))
    await child.start()
    while "ready" not in notes:
        await asyncio.sleep(0.05)
    started = time.monotonic()
    code = await child.stop(timeout_s=0.5)
    assert code == -9
    assert time.monotonic() - started < 10
    assert "stubborn did not stop within 0.5s, killing it" in notes


def test_a_subreaper_adopts_orphans_and_can_stop_them():
    """A grandchild whose parent exited becomes our child: `up` can find what a runtime lost."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from services.cli.children import adopted_children, become_subreaper, reap, terminate_pid
        assert become_subreaper()
        middle = subprocess.Popen([{PY!r}, "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid)"],
            stdout=subprocess.PIPE, text=True)
        orphan = int(middle.stdout.readline())
        middle.wait()
        deadline = time.monotonic() + 10
        while orphan not in adopted_children({{middle.pid}}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan in adopted_children({{middle.pid}}), "orphan not adopted"
        terminate_pid(orphan, "orphan")
        while not reap(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(orphan)
    """)
    done = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not alive(int(done.stdout.split()[-1]))


def test_stopping_a_stray_that_leads_a_process_group_stops_the_whole_group():
    """An engine's wrapper shell leads its group (setsid); SIGTERM to the shell alone would orphan the engine."""
    from services.cli.children import terminate_pid

    leader = subprocess.Popen(
        ["sh", "-c", f"{PY} -c 'import time; time.sleep(60)' & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        inner = int(leader.stdout.readline())
        terminate_pid(leader.pid, "wrapper")
        leader.wait(10)
        deadline = time.monotonic() + 10
        while alive(inner) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(inner), "the wrapper's child outlived it"
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
        leader.stdout.close()
