"""Cache cleanup at its edges: the exact failure message, reservations read at `now`, size units, a failed delete.

Complements test_cleanup.py with the cases it leaves open (found by `make mutate`). Like
test_cleanup.py, the delete-step tests run the script in a real sh, on a temporary directory.
"""

import os
import shlex
import shutil
import subprocess

import pytest
from records import NOW, ago, engine, later

from shared.policy.cleanup import (
    DONE_MARKER,
    SIZE_MARKER,
    CleanResult,
    clean_script,
    engines_to_clean,
    format_bytes,
    parse_clean_output,
)

USED = dict(last_stream_usage=ago(60), idle_since=ago(50))


def test_a_lapsed_reservation_does_not_keep_an_engine_from_its_clean_but_a_live_one_does():
    records = [
        engine("lapsed", reservations={"r": ago(5)}, **USED),
        engine("live", reservations={"r": later(5)}, **USED),
    ]
    assert [r.container_id for r in engines_to_clean(records, NOW)] == ["lapsed"]


@pytest.mark.parametrize(
    "exit_code, output, expected",
    [
        (0, "", CleanResult(ok=False, error="clean script exited 0 but no size reported: no output")),
        (
            0,
            f"{SIZE_MARKER}10\n",
            CleanResult(ok=False, cache_size_bytes=10, error="clean script exited 0 but cache not emptied: no output"),
        ),
        (126, "", CleanResult(ok=False, error="clean script exited 126: no output")),
        (
            5,
            f"find: a: denied\n{SIZE_MARKER}10\nfind: b: denied\n{DONE_MARKER}\n",
            CleanResult(ok=False, cache_size_bytes=10, error="clean script exited 5: find: a: denied\nfind: b: denied"),
        ),
    ],
    ids=["exit-0-silent", "exit-0-not-emptied", "failed-silently", "stderr-lines-kept-markers-dropped"],
)
def test_a_failed_clean_says_how_it_exited_and_what_it_printed_apart_from_the_markers(exit_code, output, expected):
    assert parse_clean_output(exit_code, output) == expected


@pytest.mark.parametrize(
    "size, text",
    [(999_949, "999.9 KB"), (999_950, "1.0 MB"), (999_950_000_000, "1.0 TB"), (10**15, "1000.0 TB")],
    ids=["just-below-a-unit", "rounds-up-to-the-next-unit", "rounds-up-to-tb", "tb-is-the-largest-unit"],
)
def test_a_size_is_never_written_as_1000_of_a_unit_below_tb(size, text):
    assert format_bytes(size) == text


# ---------------------------------------------------------------- the delete step, run in a real shell


def with_flaky_find(tmp_path, failures: int) -> dict[str, str]:
    """An environment whose `find` fails its first `failures` calls, as when the engine rotates a file
    away mid-delete, then is the real find. Returns the environment to run the script in."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "find-calls"
    bin_dir.mkdir()
    real_find = shutil.which("find")
    (bin_dir / "find").write_text(
        "#!/bin/sh\n"
        f"n=$(cat {shlex.quote(str(calls))} 2>/dev/null || echo 0)\n"
        f"echo $((n + 1)) > {shlex.quote(str(calls))}\n"
        f'if [ "$n" -lt {failures} ]; then echo "find: cannot delete: rotated" >&2; exit 1; fi\n'
        f'exec {shlex.quote(real_find)} "$@"\n'
    )
    (bin_dir / "find").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_script_in(cache, env) -> CleanResult:
    done = subprocess.run(["sh", "-c", clean_script(str(cache))], capture_output=True, text=True, timeout=30, env=env)
    return parse_clean_output(done.returncode, done.stdout + done.stderr)


def test_a_delete_that_fails_once_is_retried_quietly_and_the_clean_succeeds(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "1.ts").write_bytes(b"x" * 100)
    assert run_script_in(cache, with_flaky_find(tmp_path, failures=1)) == CleanResult(ok=True, cache_size_bytes=100)
    assert cache.is_dir() and os.listdir(cache) == []


def test_a_delete_that_fails_twice_is_reported_as_exit_5_with_the_second_attempts_complaint_only(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "1.ts").write_bytes(b"x" * 100)
    assert run_script_in(cache, with_flaky_find(tmp_path, failures=2)) == CleanResult(
        ok=False, cache_size_bytes=100, error="clean script exited 5: find: cannot delete: rotated"
    )
