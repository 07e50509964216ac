"""Cache cleanup: which engines are due, the clean script (run for real in sh), reading its output."""

import os
import subprocess

import pytest
from records import NOW, ago, claim, engine, later

from shared.policy.cleanup import (
    DONE_MARKER,
    SIZE_MARKER,
    CleanResult,
    clean_script,
    engines_to_clean,
    format_bytes,
    needs_clean,
    parse_clean_output,
    used_since_clean,
)


@pytest.mark.parametrize(
    "record, expected",
    [
        (engine("x"), False),
        (engine("x", last_stream_usage=ago(60)), True),
        (engine("x", last_stream_usage=ago(60), last_cache_cleanup=ago(30)), False),
        (engine("x", last_stream_usage=ago(30), last_cache_cleanup=ago(60)), True),
        (engine("x", last_stream_usage=ago(30), last_cache_cleanup=ago(30)), False),
        (engine("x", last_cache_cleanup=ago(30)), False),
    ],
    ids=["never-used", "used-never-cleaned", "cleaned-after-use", "used-after-clean", "same-instant", "cleaned-unused"],
)
def test_used_since_clean(record, expected):
    assert used_since_clean(record) is expected


USED = dict(last_stream_usage=ago(60), idle_since=ago(50))


@pytest.mark.parametrize(
    "record, expected",
    [
        (engine("x", **USED), True),
        (engine("x", **USED, streams=["s"]), False),
        (engine("x", **USED, reservations={"r": later(5)}), False),
        (engine("x", **USED, reservations={"r": ago(5)}), True),
        (engine("x", **USED, claim=claim("clean"), state="cleaning"), False),
        (engine("x", **USED, claim=claim("reap"), state="draining"), False),
        (engine("x", **USED, claim=claim("clean", expires_in=-1), state="cleaning"), True),
        (engine("x", **USED, runtime="external"), False),
        (engine("x", **USED, runtime="docker"), True),
        (engine("x", **USED, health_status="unhealthy"), True),
        (engine("x", **USED, last_cache_cleanup=ago(10)), False),
        (engine("x", idle_since=ago(50)), False),
    ],
    ids=[
        "idle-and-used",
        "streaming",
        "live-reservation",
        "expired-reservation",
        "being-cleaned",
        "being-reaped",
        "lapsed-claim",
        "external-never",
        "docker",
        "unhealthy-still-cleaned",
        "already-cleaned",
        "never-used",
    ],
)
def test_needs_clean(record, expected):
    assert needs_clean(record, NOW) is expected


def test_the_sweep_cleans_the_longest_unused_first_and_skips_the_rest():
    records = [
        engine("b", last_stream_usage=ago(100)),
        engine("a", last_stream_usage=ago(100)),
        engine("c", last_stream_usage=ago(500)),
        engine("busy", last_stream_usage=ago(900), streams=["s"]),
        engine("clean", last_stream_usage=ago(900), last_cache_cleanup=ago(800)),
        engine("ext", last_stream_usage=ago(900), runtime="external"),
    ]
    assert [r.container_id for r in engines_to_clean(records, NOW)] == ["c", "a", "b"]
    assert engines_to_clean([], NOW) == []


# ---------------------------------------------------------------- the script, run in a real shell


def run_script(cache_dir) -> CleanResult:
    done = subprocess.run(["sh", "-c", clean_script(str(cache_dir))], capture_output=True, text=True, timeout=30)
    return parse_clean_output(done.returncode, done.stdout + done.stderr)


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_a_cache_of_files_measures_their_bytes_and_is_emptied_but_kept(tmp_path):
    cache = tmp_path / "cache"
    write(cache / "a.dat", 65536)
    write(cache / ".hidden", 100)
    write(cache / "-n", 7)
    assert run_script(cache) == CleanResult(ok=True, cache_size_bytes=65643)
    assert cache.is_dir() and os.listdir(cache) == []


def test_nested_directories_are_measured_and_removed(tmp_path):
    cache = tmp_path / "cache"
    write(cache / "live" / "seg" / "1.ts", 1000)
    result = run_script(cache)
    assert result.ok and result.cache_size_bytes >= 1000
    assert os.listdir(cache) == []


def test_an_empty_cache_measures_zero(tmp_path):
    (tmp_path / "cache").mkdir()
    assert run_script(tmp_path / "cache") == CleanResult(ok=True, cache_size_bytes=0)


@pytest.mark.parametrize("name", ["with space", "it's", "semi;colon $(touch pwned)", "star*", "new\nline"])
def test_awkward_directory_names_are_quoted(tmp_path, name):
    cache = tmp_path / name
    write(cache / "f", 10)
    assert run_script(cache) == CleanResult(ok=True, cache_size_bytes=10)
    assert cache.is_dir() and os.listdir(cache) == []
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_a_missing_directory_is_an_error_naming_the_setting(tmp_path):
    result = run_script(tmp_path / "nope")
    assert not result.ok and result.cache_size_bytes is None
    assert "does not exist" in result.error and "ENGINE_CACHE_DIR" in result.error and "exited 3" in result.error


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "exit_code, output, expected",
    [
        (0, f"{SIZE_MARKER}12345\n{DONE_MARKER}\n", CleanResult(ok=True, cache_size_bytes=12345)),
        (0, f"du: warning\n{SIZE_MARKER}5\r\nnoise\n{DONE_MARKER}\r\n", CleanResult(ok=True, cache_size_bytes=5)),
        (0, f"{SIZE_MARKER}0\n{DONE_MARKER}", CleanResult(ok=True, cache_size_bytes=0)),
        (0, f"{SIZE_MARKER}-4096\n{DONE_MARKER}", CleanResult(ok=True, cache_size_bytes=0)),
    ],
    ids=["plain", "noise-and-crlf", "empty-cache", "negative-clamped"],
)
def test_parse_success(exit_code, output, expected):
    assert parse_clean_output(exit_code, output) == expected


@pytest.mark.parametrize(
    "exit_code, output, size, fragment",
    [
        (0, "", None, "exited 0 but no size reported: no output"),
        (0, f"{DONE_MARKER}\n", None, "no size reported"),
        (0, "12345\t/cache\n", None, "no size reported: 12345\t/cache"),
        (0, f"{SIZE_MARKER}10\n", 10, "cache not emptied"),
        (126, "OCI runtime exec failed: no such container", None, "exited 126: OCI runtime exec failed"),
        (5, f"{SIZE_MARKER}10\nfind: denied\n", 10, "exited 5: find: denied"),
        (4, f"{SIZE_MARKER}x\n", None, "exited 4"),
        (1, "e" * 5000, None, "e" * 500),
    ],
    ids=[
        "nothing",
        "no-size",
        "raw-du-output-is-not-trusted",
        "not-emptied",
        "exec-failed",
        "delete-failed",
        "garbled-size",
        "long-output-truncated",
    ],
)
def test_parse_failure(exit_code, output, size, fragment):
    result = parse_clean_output(exit_code, output)
    assert not result.ok and result.cache_size_bytes == size
    assert fragment in result.error and len(result.error) < 600


@pytest.mark.parametrize(
    "size, text",
    [
        (None, "size unknown"),
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (12_345_678, "12.3 MB"),
        (999_960, "1.0 MB"),
        (3_210_000_000, "3.2 GB"),
        (5 * 10**12, "5.0 TB"),
    ],
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text
