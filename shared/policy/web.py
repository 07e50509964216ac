"""Which HTTP requests a browser may have been tricked into sending: decided from headers alone.

Without API_KEY (the default) the gateway's writes are open to anything that
can reach the port, and a web page in the operator's browser can: a
`text/plain` POST needs no CORS preflight, and DNS rebinding lets a page on
`attacker.example` talk to 127.0.0.1 under its own name. Three checks close
that, each answered with a status and a message naming the problem:

- `Host` must be one of the names the gateway is known by (rebinding sends the
  attacker's name);
- a write's `Origin`, when a browser sends one, must be the gateway itself;
- a write that carries a body must say `application/json` (the content types a
  page may send without a preflight are all something else).

Non-browser clients (curl, httpx, Go's net/http as acexy uses it) send no
`Origin` and do set a JSON content type, so they pass unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def allowed_hosts(configured: Iterable[str], bind_host: str) -> frozenset[str] | None:
    """The names `Host` may carry; None when any host is allowed (`*`).

    Unconfigured: the loopback names plus the address the gateway listens on
    (unless that is the any-address, which names no host).
    """
    names = tuple(configured)
    if "*" in names:
        return None
    if not names:
        names = LOOPBACK_NAMES + (() if bind_host in ANY_ADDRESS else (bind_host,))
    return frozenset(_bare(name) for name in names)


def host_name(host_header: str) -> str:
    """`Host` without its port, lower-cased, IPv6 without brackets: `[::1]:8000` → `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def check_request(
    method: str,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    has_body: bool,
    hosts: frozenset[str] | None,
) -> Refusal | None:
    """None when the request may proceed, else why not (421 host, 403 origin, 415 content type)."""
    if hosts is not None and host is not None and host_name(host) not in hosts:
        return Refusal(
            421,
            f"this gateway does not answer to host {host_name(host)!r}; "
            f"add it to GATEWAY_ALLOWED_HOSTS (now {', '.join(sorted(hosts))}) if it is really ours",
        )
    if method.upper() not in WRITE_METHODS:
        return None
    if origin is not None and not same_origin(origin, host):
        return Refusal(403, f"cross-origin write refused: Origin {origin[:100]!r} is not this gateway")
    if (has_body or content_type) and not is_json(content_type):
        given = (content_type or "none")[:100]
        return Refusal(415, f"writes must be sent as Content-Type: application/json (got {given})")
    return None


def same_origin(origin: str, host: str | None) -> bool:
    """An `Origin` naming this gateway as the browser reached it (scheme aside); `null` never is."""
    if host is None or origin.strip().lower() == "null":
        return False
    try:
        authority = urlsplit(origin.strip()).netloc.lower()
    except ValueError:
        return False
    return bool(authority) and authority == host.strip().lower()


def is_json(content_type: str | None) -> bool:
    return (content_type or "").partition(";")[0].strip().lower() == "application/json"


def _bare(name: str) -> str:
    name = name.strip().lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name
