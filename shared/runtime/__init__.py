"""Runtimes: where managed engines live (DESIGN §5). See base.py for the interface.

`make_runtime(config)` builds the one `ENGINE_RUNTIME` names: `docker` or
`local`. `external` engines have no runtime (registered by address, never
created, cleaned or removed), so asking for one is an error.
"""

from __future__ import annotations

from shared.config import Config
from shared.runtime.base import (
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_POOL,
    LABEL_PORT,
    LABEL_SCOPE,
    EngineSpec,
    ExecResult,
    ExecStillRunning,
    Runtime,
    RuntimeEvent,
    RuntimeFailure,
    placeholder,
)

__all__ = [
    "LABEL_MANAGED",
    "LABEL_NAME",
    "LABEL_POOL",
    "LABEL_PORT",
    "LABEL_SCOPE",
    "EngineSpec",
    "ExecResult",
    "ExecStillRunning",
    "Runtime",
    "RuntimeEvent",
    "RuntimeFailure",
    "make_runtime",
    "placeholder",
]


def make_runtime(config: Config) -> Runtime:
    if config.engine_runtime == "docker":
        from shared.runtime.docker import DockerRuntime  # the docker SDK only where it is used

        return DockerRuntime(config)
    if config.engine_runtime == "local":
        from shared.runtime.local import LocalRuntime

        return LocalRuntime(config)
    raise RuntimeFailure(
        f"ENGINE_RUNTIME={config.engine_runtime} has no runtime: external engines are registered by address "
        "and never created, cleaned or removed"
    )
