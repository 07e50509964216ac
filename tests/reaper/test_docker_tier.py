"""The docker tier: the same clean and reap on acesim containers (host networking, loopback ports)."""

import subprocess
import uuid
from pathlib import Path

import pytest
from support import wait_until

from shared import names

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def acesim_image() -> str:
    """aceorch/acesim:latest, built locally by deploy/images.sh (it skips an up-to-date image)."""
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no Docker Engine ({exc}); run `bash deploy/ci_setup.sh`")
    build = subprocess.run(
        ["bash", "deploy/images.sh", "acesim"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if build.returncode != 0:
        pytest.fail(f"bash deploy/images.sh acesim failed:\n{build.stdout}\n{build.stderr}")
    return "aceorch/acesim:latest"


def containers(pool_label: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=aceorch.pool={pool_label}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.split()


async def test_docker_exec_clean_measures_and_empties_and_the_reaper_removes_containers(pools, acesim_image):
    label = f"test-{uuid.uuid4().hex[:10]}"
    pool = await pools(
        ENGINE_RUNTIME="docker",
        DOCKER_NETWORK="host",
        ENGINE_IMAGE=acesim_image,
        ENGINE_POOL=label,
        MIN_REPLICAS=1,
        MIN_FREE_REPLICAS=1,
        ENGINE_GRACE_PERIOD_S=5,
    )
    specs = await pool.create_engines(2)
    assert len(containers(label)) == 2
    engines = await pool.wait_healthy(2)
    janitor = pool.service("janitor")
    reaper = pool.service("reaper")
    for process in (janitor, reaper):
        await wait_until(lambda: "started with" in process.log(), timeout=20, what=f"{process.name} started")

    engine = engines[0]
    spec = next(s for s in specs if s.container_id == engine["container_id"])
    await pool.play(engine, "docker-content", seconds=2.0)
    measured = (await pool.sim_state(spec.port))["cache_bytes"]
    assert measured > 0
    await pool.ended("stream-docker-content", spec.container_id)

    async def cleaned():
        record = await pool.engine(spec.container_id)
        return record if record and record["last_cache_cleanup"] else None

    record = await wait_until(cleaned, timeout=20, what="the clean through docker exec")
    assert record["cache_size_bytes"] == measured
    assert (await pool.sim_state(spec.port))["cache_bytes"] == 0
    listing = await pool.runtime.exec_shell(spec, f'test -d "{spec.cache_dir}" && ls -A "{spec.cache_dir}" | wc -l')
    assert (listing.exit_code, listing.output.strip()) == (0, "0")
    assert f"janitor: cleaned cache of {spec.container_name} (" in janitor.log()

    # Both idle past the grace period, floors 1 engine / 1 free: exactly one container goes.
    await wait_until(lambda: pool.recorder.of(names.ENGINE_REMOVED), timeout=30, what="a container reaped")
    await wait_until(lambda: len(containers(label)) == 1, timeout=30, what="the container gone from docker")
    (removal,) = pool.recorder.of(names.ENGINE_REMOVED)
    assert removal["reason"] == "idle"

    async def one_record_left():
        records = await pool.engines()
        return records if len(records) == 1 else None

    # The state-keeper applies the removal after the reaper published it: wait for the record too.
    (left,) = await wait_until(one_record_left, timeout=30, what="the reaped engine's record deleted")
    assert left["container_id"] != removal["container_id"]
    assert containers(label)[0] == left["container_id"][:12]
