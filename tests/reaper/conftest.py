"""`pools(**settings)`: a state-keeper, the prober and local acesim engines on the test's nats-server."""

import pytest

from pool_harness import Pool


@pytest.fixture
async def pools(nats_server, processes, nc, tmp_path):
    made: list[Pool] = []

    async def make(prober: bool = True, **settings) -> Pool:
        pool = Pool(nats_server.url, processes, nc, tmp_path, **settings)
        made.append(pool)
        await pool.start(prober=prober)
        return pool

    yield make
    for pool in made:
        await pool.close()
