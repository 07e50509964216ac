"""Fixtures for gateway tests: a real stack per test (see gateway_stack.py)."""

from __future__ import annotations

import httpx
import pytest
from gateway_stack import Stack
from support import base_env, wait_for_service

from shared import names


@pytest.fixture
async def make_stack(nats_server, processes, nc, tmp_path):
    """make_stack(**ENV) → a Stack with one state-keeper and one gateway, both given ENV."""
    made: list[Stack] = []

    async def make(**overrides: object) -> Stack:
        stack = Stack(nats_server, processes, nc, tmp_path, base_env(nats_server.url, **overrides))
        made.append(stack)
        stack.state_keeper = processes.service("state_keeper", stack.env)
        await wait_for_service(nc, names.SERVICE_NAME, 1)
        stack.url, stack.gateway = await stack.start_gateway()
        stack.http = httpx.AsyncClient(base_url=stack.url, timeout=10)
        return stack

    yield make
    for stack in made:
        await stack.stop()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()
