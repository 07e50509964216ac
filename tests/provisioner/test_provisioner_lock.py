"""The provisioner's creation lock: one holder across replicas, freed on exit, expiring after a crash."""

from __future__ import annotations

from services.provisioner.lock import KvLock
from shared.bus import connect
from shared.config import load_config


async def test_one_holder_at_a_time_and_released_on_exit(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "lock-test")
    try:
        first = KvLock(bus.leases, "provisioner.lock", "a", ttl_s=30)
        second = KvLock(bus.leases, "provisioner.lock", "b", ttl_s=30)
        async with first.hold(wait_s=1) as held:
            assert held
            async with second.hold(wait_s=0.3) as also:
                assert not also
        async with second.hold(wait_s=1) as held:
            assert held
    finally:
        await bus.close()


async def test_a_crashed_holders_lease_expires_and_never_frees_its_successors(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "lock-test")
    try:
        crashed = KvLock(bus.leases, "provisioner.lock", "crashed", ttl_s=1)
        successor = KvLock(bus.leases, "provisioner.lock", "successor", ttl_s=30)
        third = KvLock(bus.leases, "provisioner.lock", "third", ttl_s=30)
        stale_revision = await crashed._acquire(wait_s=1)
        async with successor.hold(wait_s=5) as held:  # the crashed holder's TTL lets it in
            assert held
            await crashed._release(stale_revision)  # a late release must not free the successor's lock
            async with third.hold(wait_s=0.3) as also:
                assert not also
    finally:
        await bus.close()
