"""The `fleet` fixture: real nats-server, state-keeper, acesim and prober processes."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

# `prober_fleet` lives next to this file; importable whatever pytest's import mode.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from prober_fleet import Fleet  # noqa: E402  # after the sys.path set-up above


@pytest.fixture
async def fleet(nc, nats_server, processes, tmp_path):
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        yield Fleet(nc=nc, processes=processes, nats_url=nats_server.url, tmp_path=tmp_path, http=http)
