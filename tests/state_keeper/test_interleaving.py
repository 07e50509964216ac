"""Two appliers (two replicas' worth of Store and views) against one real nats-server, with the
starts, ends and an engine removal of many streams all in flight at once: however their KV
steps interleave, no engine keeps a stream that ended and no stream stays started on a
removed engine."""

from __future__ import annotations

import asyncio
import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.state_keeper.events import EventApplier, Rejected
from services.state_keeper.store import Store
from shared.kv import read
from shared.policy.health import HealthPolicy
from shared.schemas import EngineRegistered, EngineRemoved, StreamEnded, StreamStarted, decode_engine, decode_stream

ENGINES = ("e1", "e2", "e3")
REMOVED = ("e2", "e3")
STREAMS = 40
EXAMPLES = itertools.count()


class JitteryStore(Store):
    """A real Store whose every write first waits a random moment, as a busy replica's would:
    it widens the windows between one handler's steps so other handlers' steps fall into them."""

    def __init__(self, bus, rnd: random.Random) -> None:
        super().__init__(bus, stream_ttl_s=600)
        self.rnd = rnd

    async def update_engine(self, *args, **kwargs):
        await asyncio.sleep(self.rnd.random() * 0.008)
        return await super().update_engine(*args, **kwargs)

    async def update_stream(self, *args, **kwargs):
        await asyncio.sleep(self.rnd.random() * 0.008)
        return await super().update_stream(*args, **kwargs)


async def _replica(bus, rnd: random.Random) -> EventApplier:
    store = JitteryStore(bus, rnd)
    await store.start()

    async def ignore(_note) -> None:
        pass

    return EventApplier(store, HealthPolicy(fall=3, rise=2), ignore)


async def _settle(applier: EventApplier, event, seq: int) -> None:
    """Apply like the consumer does: a rejected event is dropped, one that fails for now is redelivered."""
    for _ in range(50):
        try:
            await applier.apply(event, seq)
            return
        except Rejected:
            return
        except Exception:
            await asyncio.sleep(0.01)
    raise AssertionError(f"{event} never applied")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), remove=st.booleans())
async def test_interleaved_starts_ends_and_removal_leave_no_phantom(bus, seed, remove):
    rnd = random.Random(seed)
    prefix = f"x{next(EXAMPLES)}-"  # each example its own keys: Hypothesis may repeat a seed
    replicas = [await _replica(bus, rnd), await _replica(bus, rnd)]
    try:
        for seq, engine in enumerate(ENGINES, start=1):
            await replicas[0].apply(EngineRegistered(container_id=prefix + engine, host="127.0.0.1", port=7000), seq)
        events: list = []
        ended: set[str] = set()
        for n in range(STREAMS):
            sid, engine = f"{prefix}s{n}", prefix + ENGINES[n % len(ENGINES)]
            events.append(StreamStarted(stream_id=sid, container_id=engine))
            if rnd.random() < 0.2:
                events.append(StreamStarted(stream_id=sid, container_id=engine))  # a redelivery
            if n % 4:
                events.append(StreamEnded(stream_id=sid, container_id=engine, reason="done"))
                ended.add(sid)
        if remove:
            events += [EngineRemoved(container_id=prefix + engine, reason="gone") for engine in REMOVED]
        # Sequences in publishing order (after the registrations), then delivered in any order.
        numbered = list(enumerate(events, start=len(ENGINES) + 1))
        rnd.shuffle(numbered)
        await asyncio.gather(*(_settle(rnd.choice(replicas), event, seq) for seq, event in numbered))

        for engine in ENGINES:
            found = await read(bus.engines, prefix + engine, decode_engine)
            if remove and engine in REMOVED:
                assert found is None
                continue
            listed = set(found.value.streams)
            playing = {f"{prefix}s{n}" for n in range(STREAMS) if n % len(ENGINES) == ENGINES.index(engine)} - ended
            assert listed == playing, (engine, listed ^ playing)
        for n in range(STREAMS):
            record = (await read(bus.streams, f"{prefix}s{n}", decode_stream)).value
            on_removed = remove and record.container_id in {prefix + engine for engine in REMOVED}
            assert record.status == ("ended" if f"{prefix}s{n}" in ended or on_removed else "started"), record
    finally:
        for replica in replicas:
            await replica.store.stop()
