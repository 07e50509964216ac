"""Fixtures for proxy tests: a real stack per test (see proxy_stack.py)."""

from __future__ import annotations

import pytest
from proxy_stack import make_stack


@pytest.fixture
async def stack_factory(nats_server, processes, nc, tmp_path):
    made = []

    async def make(**overrides: object):
        stack = await make_stack(processes, nc, nats_server.url, tmp_path, **overrides)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        await stack.http.aclose()
