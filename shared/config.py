"""Configuration from the environment (DESIGN §6), validated once at start-up.

Every invalid value fails with a message naming the variable, the value and
what was expected, so an operator can fix the right line of their env file.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable has an invalid value."""


def _number(kind: type, minimum: float | None) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _port_range(name: str, raw: str) -> tuple[int, int]:
    low, sep, high = raw.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise ConfigError(f"{name} must look like 40000-40999, got {raw!r}") from None
    if not sep or not 1 <= first <= last <= 65535:
        raise ConfigError(f"{name} must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got {raw!r}")
    return first, last


def _label_value(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", raw):
        raise ConfigError(f"{name} must be 1-63 letters, digits, '_', '.' or '-', got {raw!r}")
    return raw


def _host_list(name: str, raw: str) -> tuple[str, ...]:
    """Host names, comma-separated, lower-cased; `*` alone means any host."""
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    if not hosts:
        raise ConfigError(f"{name} must list host names (comma-separated) or be *, got {raw!r}")
    for host in hosts:
        if host != "*" and not re.fullmatch(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]|[0-9a-f:.]*:[0-9a-f:.]*", host):
            raise ConfigError(f"{name} must list host names without ports or schemes, got {host!r}")
    if "*" in hosts and len(hosts) > 1:
        raise ConfigError(f"{name}: * means any host and cannot be combined with names, got {raw!r}")
    return hosts


def _url(name: str, raw: str) -> str:
    if not raw.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"{name} must be a nats:// URL (comma-separated for a cluster), got {raw!r}")
    return raw


def _address(name: str, raw: str) -> str:
    """One IP address or host name, without a port or scheme (what a listening socket binds)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+|[0-9A-Fa-f.]*(:[0-9A-Fa-f.]*){2,}", raw):  # IPv6: 2+ colons
        raise ConfigError(f"{name} must be an IP address or host name without port or scheme, got {raw!r}")
    return raw


def default_host_id() -> str:
    """The machine's host name as a HOST_ID: what `_label_value` accepts, cut to 63 characters."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).lstrip("_.-")[:63]
    return name or "localhost"


POSITIVE_FLOAT = _number(float, 0.001)
NON_NEGATIVE_INT = _number(int, 0)
POSITIVE_INT = _number(int, 1)


@dataclass(frozen=True, kw_only=True)
class Config:
    nats_url: str = "nats://127.0.0.1:4222"
    nats_replicas: int = 1
    nats_connect_timeout_s: float = 5.0
    nats_nkey: str = ""  # path of this process's nkey seed file (its role's key); empty: no authentication
    nats_tls_ca: str = ""  # CA file that signed the server's certificate; set: connect with TLS
    nats_tls_cert: str = ""  # this process's client certificate (for servers that verify clients)
    nats_tls_key: str = ""  # its private key
    health_check_interval_s: float = 30.0
    health_check_timeout_s: float = 5.0
    health_fail_threshold: int = 2
    health_rise_threshold: int = 2
    health_recheck_s: float = 5.0
    probe_concurrency: int = 100
    autoscale_interval_s: float = 30.0
    engine_grace_period_s: float = 30.0
    auto_delete: bool = True
    min_replicas: int = 2
    min_free_replicas: int = 1
    max_replicas: int = 10
    max_streams_per_engine: int = 3
    reservation_ttl_s: float = 30.0
    share_content: bool = True
    unhealthy_replace_after_s: float = 120.0
    claim_ttl_s: float = 60.0
    stream_ttl_s: float = 3600.0
    unknown_engine_retry_s: float = 30.0
    max_clock_skew_s: float = 30.0
    engine_runtime: str = "local"
    engine_image: str = "aceorch/acesim:latest"
    engine_cache_dir: str = "/root/.ACEStream/.acestream_cache"
    engine_command: str = ""
    engine_port_range: tuple[int, int] = (40000, 40999)
    engine_start_timeout_s: float = 60.0
    engine_memory_limit: str = ""
    engine_state_dir: str = "data/engines"
    engine_host: str = "127.0.0.1"  # local runtime: the address its engines listen on and are recorded at
    provision_concurrency: int = 4
    engine_pool: str = "default"
    docker_network: str = ""
    api_key: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    max_body_bytes: int = 65536
    gateway_keepalive_s: float = 15.0
    gateway_allowed_hosts: tuple[str, ...] = ()
    gateway_header_timeout_s: float = 10.0
    live_max_clients: int = 100
    history_interval_s: float = 10.0
    history_max_age_h: float = 24.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # The stream proxy (DESIGN §10).
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8080
    proxy_linger_s: float = 10.0
    stat_interval_s: float = 5.0
    stall_timeout_s: float = 10.0
    starvation_s: float = 30.0
    failover_attempts: int = 3
    proxy_buffer_bytes: int = 4 * 1024 * 1024
    proxy_start_timeout_s: float = 30.0
    proxy_header_timeout_s: float = 10.0
    # Many hosts, one fleet: the host this process's engines run on, and a floor of engines per host.
    host_id: str = dataclass_field(default_factory=default_host_id)
    min_replicas_per_host: int = 0
    host_max_engines: int = 0  # engines one host runs at most; 0: no per-host cap


PARSERS: dict[str, Callable[[str, str], Any]] = {
    "nats_url": _url,
    "nats_replicas": _number(int, 1),
    "nats_connect_timeout_s": POSITIVE_FLOAT,
    "nats_nkey": _text,
    "nats_tls_ca": _text,
    "nats_tls_cert": _text,
    "nats_tls_key": _text,
    "health_check_interval_s": POSITIVE_FLOAT,
    "health_check_timeout_s": POSITIVE_FLOAT,
    "health_fail_threshold": POSITIVE_INT,
    "health_rise_threshold": POSITIVE_INT,
    "health_recheck_s": POSITIVE_FLOAT,
    "probe_concurrency": POSITIVE_INT,
    "autoscale_interval_s": POSITIVE_FLOAT,
    "engine_grace_period_s": _number(float, 0),
    "auto_delete": _bool,
    "min_replicas": NON_NEGATIVE_INT,
    "min_free_replicas": NON_NEGATIVE_INT,
    "max_replicas": POSITIVE_INT,
    "max_streams_per_engine": POSITIVE_INT,
    "reservation_ttl_s": POSITIVE_FLOAT,
    "share_content": _bool,
    "unhealthy_replace_after_s": POSITIVE_FLOAT,
    "claim_ttl_s": POSITIVE_FLOAT,
    "stream_ttl_s": _number(float, 1),
    "unknown_engine_retry_s": POSITIVE_FLOAT,
    "max_clock_skew_s": _number(float, 0),
    "engine_runtime": _choice("docker", "local", "external"),
    "engine_image": _text,
    "engine_cache_dir": _text,
    "engine_command": _text,
    "engine_port_range": _port_range,
    "engine_start_timeout_s": POSITIVE_FLOAT,
    "engine_memory_limit": _text,
    "engine_state_dir": _text,
    "engine_host": _address,
    "provision_concurrency": POSITIVE_INT,
    "engine_pool": _label_value,
    "docker_network": _text,
    "api_key": _text,
    "gateway_host": _text,
    "gateway_port": _number(int, 1),
    "max_body_bytes": POSITIVE_INT,
    "gateway_keepalive_s": POSITIVE_FLOAT,
    "gateway_allowed_hosts": _host_list,
    "gateway_header_timeout_s": POSITIVE_FLOAT,
    "live_max_clients": POSITIVE_INT,
    "history_interval_s": _number(float, 0.1),
    "history_max_age_h": POSITIVE_FLOAT,
    "metrics_port": NON_NEGATIVE_INT,
    "metrics_host": _text,
    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "proxy_host": _text,
    "proxy_port": _number(int, 1),
    "proxy_linger_s": _number(float, 0),
    "stat_interval_s": POSITIVE_FLOAT,
    "stall_timeout_s": POSITIVE_FLOAT,
    "starvation_s": POSITIVE_FLOAT,
    "failover_attempts": NON_NEGATIVE_INT,
    "proxy_buffer_bytes": _number(int, 188 * 64),
    "proxy_start_timeout_s": POSITIVE_FLOAT,
    "proxy_header_timeout_s": POSITIVE_FLOAT,
    "host_id": _label_value,
    "min_replicas_per_host": NON_NEGATIVE_INT,
    "host_max_engines": NON_NEGATIVE_INT,
}


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Read every known variable (upper-case field name) from the environment."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in fields(Config):
        raw = env.get(field.name.upper())
        if raw is None or raw == "" and field.type != "str":
            continue
        values[field.name] = PARSERS[field.name](field.name.upper(), raw.strip())
    config = Config(**values)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    if bool(config.nats_tls_cert) != bool(config.nats_tls_key):
        raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both (a client certificate) or neither")
    if config.nats_tls_cert and not config.nats_tls_ca:
        raise ConfigError("NATS_TLS_CERT needs NATS_TLS_CA (the CA that signed the server's certificate)")
    if config.min_replicas > config.max_replicas:
        raise ConfigError(f"MIN_REPLICAS ({config.min_replicas}) must not exceed MAX_REPLICAS ({config.max_replicas})")
    if config.min_free_replicas > config.max_replicas:
        raise ConfigError(
            f"MIN_FREE_REPLICAS ({config.min_free_replicas}) must not exceed MAX_REPLICAS ({config.max_replicas})"
        )
    if 0 < config.host_max_engines < config.min_replicas_per_host:
        raise ConfigError(
            f"MIN_REPLICAS_PER_HOST ({config.min_replicas_per_host}) must not exceed "
            f"HOST_MAX_ENGINES ({config.host_max_engines}): a host could never meet its floor"
        )
    if config.health_check_timeout_s > config.health_check_interval_s:
        raise ConfigError(
            f"HEALTH_CHECK_TIMEOUT_S ({config.health_check_timeout_s}) must not exceed "
            f"HEALTH_CHECK_INTERVAL_S ({config.health_check_interval_s})"
        )
