"""Who may do what on the bus (DESIGN §11), as data, and the nats-server config that enforces it.

Every process connects as one role with an nkey. A role's grants are derived
from the contract (`shared.contract`: who publishes, subscribes to and requests
each subject), so asyncapi.yaml and the server's permissions cannot drift
apart, plus the JetStream and KV subjects nats-py really sends for what the
role does (NATS-SECURITY.md). Everything is an allow list; a deny list repeats
what only `admin` may do (create, change or delete streams, buckets and
durable consumers; create any consumer on ACE_EVENTS or ACE_HISTORY, delete
one on ACE_EVENTS) so a broad allow added later cannot open it by accident.

Replies travel on private inboxes: a client's inbox prefix is `_INBOX_<its
public key>`, and only that key may subscribe under it, so no client reads
another's replies (nor the KV watch deliveries, which go to the same inboxes).

Known hole (nats-server issue 8274): a KV watch needs the bare
`$JS.API.CONSUMER.CREATE.KV_<bucket>` grant, and whoever holds it can give a
consumer any push `deliver_subject`; measured here, values delivered to an
event subject are captured by ACE_EVENTS, so a reader of a bucket can replay
its values as events. Only roles that read the bucket get the grant. No role
but admin may create any consumer on ACE_EVENTS or ACE_HISTORY: the gateway,
which replays and follows both, reads them by batched direct gets
(`DIRECT_READS`, shared/stream_read.py), whose answers go only to its own
inbox. Closing the KV path needs the buckets in an account of their own
(README, "Known limit").
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from shared import names
from shared.contract import CHANNELS, ENDPOINTS

ADMIN = "admin"
OPERATOR = "operator"
SERVICE_ROLES = ("state-keeper", "prober", "janitor", "reaper", "provisioner", "proxy", "gateway")
ROLES = (*SERVICE_ROLES, OPERATOR, ADMIN)
INBOX_ROOT = "_INBOX_"
SERVER_CONFIG = "auth.conf"
MICRO_QUEUE = "q"  # nats.micro's queue group: pinning it keeps a lone subscriber from taking every request
# Core subscriptions that are shared across replicas in a queue group; the grant names the group.
# The janitors of each host are a group of their own, `janitor.<host>`: each cleans only its host's engines,
# so every host's group must hear every engine.idle.
QUEUE_GROUPS = {names.ENGINE_IDLE: "janitor.*", names.STREAM_STATS: "state-keeper"}
BUCKETS = (names.ENGINES_BUCKET, names.STREAMS_BUCKET, names.LEASES_BUCKET)
# Every stream admin creates (`shared.bus.ensure_layout`) and services check for at start-up.
LAYOUT = (names.EVENTS_STREAM, names.HISTORY_STREAM, *(f"KV_{bucket}" for bucket in BUCKETS))

# Which buckets each role reads (KV get and watch) and which keys of which bucket it writes.
# Everyone opens all three buckets on connect (stream info only); reading means gets and watches.
READS: dict[str, tuple[str, ...]] = {
    "state-keeper": BUCKETS,
    "prober": (names.ENGINES_BUCKET, names.LEASES_BUCKET),
    "janitor": (names.ENGINES_BUCKET, names.LEASES_BUCKET),
    "reaper": (names.ENGINES_BUCKET, names.LEASES_BUCKET),
    "provisioner": (names.ENGINES_BUCKET, names.LEASES_BUCKET),
    "proxy": BUCKETS,
    "gateway": BUCKETS,
    OPERATOR: BUCKETS,
}
# Keys (below `$KV.<bucket>.`) a role writes: the state-keeper is the single writer of the records;
# the others only their own heartbeats (shared.membership), once-per-interval markers
# (shared.lease.claim_epoch, job names as the services spell them, per host where each host sweeps its
# own engines) and the provisioner's lock and starts.
WRITES: dict[str, tuple[tuple[str, str], ...]] = {
    "state-keeper": tuple((bucket, ">") for bucket in BUCKETS),
    "prober": ((names.LEASES_BUCKET, "members.prober.>"),),
    "proxy": ((names.LEASES_BUCKET, f"members.{names.PROXY_GROUP}.>"),),
    "janitor": ((names.LEASES_BUCKET, "epoch.janitor-sweep.>"),),
    "reaper": ((names.LEASES_BUCKET, "epoch.reaper-sweep.>"),),
    "provisioner": (
        (names.LEASES_BUCKET, "epoch.provisioner.>"),
        (names.LEASES_BUCKET, "provisioner.lock"),
        (names.LEASES_BUCKET, f"members.{names.PROVISIONER_GROUP}.>"),  # which hosts have a live provisioner
        (names.LEASES_BUCKET, f"{names.STARTS_PREFIX}.>"),  # its host's engines being started (provisioner/starts.py)
    ),
}
# Request/reply between replicas of one role, outside the contract: a provisioner passes an
# `engine.provision` on to the host the fleet-wide placement picks, whose provisioners serve it (in micro's
# queue group) on `engine.provision.host.<host>` (services/provisioner/endpoint.py).
PEER_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "provisioner": (f"{names.ENGINE_PROVISION_HOST}.*",),
}
# Streams a role reads by batched direct gets (shared/stream_read.py), never by a consumer of its own:
# the gateway's events page replays and follows ACE_EVENTS, its history ACE_HISTORY. A direct get answers
# only on the requester's inbox, so it opens no deliver-subject hole (see the module's docstring).
DIRECT_READS: dict[str, tuple[str, ...]] = {
    "gateway": (names.EVENTS_STREAM, names.HISTORY_STREAM),
}
# What only admin may do, denied to every other role whatever its allow list says.
ADMIN_ONLY = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    f"$JS.API.STREAM.PURGE.{names.EVENTS_STREAM}",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    f"$JS.API.CONSUMER.CREATE.{names.EVENTS_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{names.EVENTS_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{names.EVENTS_STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{names.HISTORY_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{names.HISTORY_STREAM}.>",
)


class AuthError(ValueError):
    """A role or key file is not what it should be; the message says which and what to do."""


@dataclass(frozen=True)
class Grants:
    """A role's permissions; `inbox` is subscribed as `<inbox>.>` (the key's private prefix)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    allow_responses: bool = False


def inbox_prefix(public_key: str) -> str:
    """The reply-inbox prefix of the client holding `public_key` (nats.connect(inbox_prefix=...))."""
    return f"{INBOX_ROOT}{public_key}"


def kv_read(bucket: str) -> tuple[str, ...]:
    """What nats-py sends to get keys and watch a bucket (gets go to MSG.GET or DIRECT.GET depending
    on who created the bucket, so both)."""
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",  # the watch's ordered consumer: no name, no filter in the subject
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",  # a stopped watch deletes its consumer at once
        f"$JS.FC.{stream}.>",
    )


def _events_consumer() -> tuple[str, ...]:
    """The state-keeper's pull consumer on ACE_EVENTS, created by admin (also the ack subjects of the
    `js_ack_fc_v2` layout, which puts a domain and a hash before the stream name)."""
    stream, durable = names.EVENTS_STREAM, names.EVENTS_CONSUMER
    return (
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.ACK.*.*.{stream}.{durable}.>",
    )


def direct_read(stream: str) -> tuple[str, ...]:
    """What shared.stream_read sends to read a stream: batched direct gets with the request in the body
    (the answers come to the role's own inbox)."""
    return (f"$JS.API.DIRECT.GET.{stream}",)


def _micro(service: str) -> tuple[str, ...]:
    """The discovery subjects a nats.micro service subscribes to (plain subscriptions)."""
    return ("$SRV.*", f"$SRV.*.{service}", f"$SRV.*.{service}.*")


def _contract_grants(role: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) of `role` as the contract names them."""
    publish: list[str] = []
    subscribe: list[str] = []
    for channel in CHANNELS:
        if role in channel.publishers:
            publish.append(channel.subject)
        if role in channel.subscribers:
            queue = QUEUE_GROUPS.get(channel.subject)
            subscribe.append(f"{channel.subject} {queue}" if queue else channel.subject)
    for endpoint in ENDPOINTS:
        if role in endpoint.requesters:
            publish.append(endpoint.subject)
        if role == endpoint.service:
            subscribe.append(f"{endpoint.subject} {MICRO_QUEUE}")
    if any(role == endpoint.service for endpoint in ENDPOINTS):
        subscribe.extend(_micro(role))
    return publish, subscribe


def grants(role: str, public_key: str) -> Grants:
    """The permissions of the user `public_key` acting as `role`."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    inbox = f"{inbox_prefix(public_key)}.>"
    if role == ADMIN:
        return Grants(publish=(">",), subscribe=(">",), allow_responses=True)
    publish, subscribe = _contract_grants(role)
    # Stream info (configuration and counts, no messages) on the whole layout: every service checks at
    # start-up that what it binds to exists.
    publish.extend(f"$JS.API.STREAM.INFO.{stream}" for stream in LAYOUT)
    for bucket in READS.get(role, ()):
        publish.extend(kv_read(bucket))
    publish.extend(subject for stream in DIRECT_READS.get(role, ()) for subject in direct_read(stream))
    publish.extend(f"$KV.{bucket}.{keys}" for bucket, keys in WRITES.get(role, ()))
    for subject in PEER_ENDPOINTS.get(role, ()):
        publish.append(subject)
        subscribe.append(f"{subject} {MICRO_QUEUE}")
    if role == "state-keeper":
        publish.extend(_events_consumer())
        # Its housekeeping scans delete markers (acked push consumer) and purges them.
        for bucket in BUCKETS:
            publish.extend((f"$JS.ACK.KV_{bucket}.>", f"$JS.API.STREAM.PURGE.KV_{bucket}"))
    if role in ("gateway", OPERATOR):
        publish.append("$SRV.>")  # readiness pings and the state-keeper's stats
    serves = any(role == endpoint.service for endpoint in ENDPOINTS)
    return Grants(
        publish=tuple(dict.fromkeys(publish)),
        subscribe=(inbox, *dict.fromkeys(subscribe)),
        deny_publish=ADMIN_ONLY,
        allow_responses=serves,
    )


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more trailing tokens."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


def permits(granted: Grants, action: str, subject: str, queue: str = "") -> bool:
    """What the server decides for `action` ("publish"/"subscribe") on `subject` (in `queue`):
    some allow entry matches and no deny entry does. A subscribe grant naming a queue group
    allows only the groups its name matches (`janitor.*`: any host's janitors)."""
    allow = granted.publish if action == "publish" else granted.subscribe
    deny = granted.deny_publish if action == "publish" else granted.deny_subscribe

    def fits(entry: str) -> bool:
        pattern, _, group = entry.partition(" ")
        return matches(pattern, subject) and (not group or bool(queue) and matches(group, queue))

    return any(fits(entry) for entry in allow) and not any(matches(entry.split(" ")[0], subject) for entry in deny)


# ------------------------------------------------------------------ the server's config


def _quoted(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{subject}"' for subject in subjects) + "]"


def user_block(role: str, public_key: str) -> str:
    """One `authorization.users` entry in nats-server's config syntax."""
    granted = grants(role, public_key)
    lines = [
        f"    # {role}",
        "    {",
        f'      nkey: "{public_key}"',
        "      permissions: {",
        f"        publish: {{ allow: {_quoted(granted.publish)}"
        + (f", deny: {_quoted(granted.deny_publish)}" if granted.deny_publish else "")
        + " }",
        f"        subscribe: {{ allow: {_quoted(granted.subscribe)}"
        + (f", deny: {_quoted(granted.deny_subscribe)}" if granted.deny_subscribe else "")
        + " }",
    ]
    if granted.allow_responses:
        lines.append("        allow_responses: true")
    lines += ["      }", "    }"]
    return "\n".join(lines)


def server_config(public_keys: dict[str, str]) -> str:
    """The `authorization` block for nats-server (include it from the main config): one nkey user per
    role, no anonymous access (a client without a known key is refused)."""
    unknown = set(public_keys) - set(ROLES)
    if unknown:
        raise AuthError(f"unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
    users = [user_block(role, public_keys[role]) for role in ROLES if role in public_keys]
    return (
        "# Written by `aceorch auth init` from shared/auth.py: one nkey user per role (DESIGN §11).\n"
        "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"
    )


def key_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk"


# ------------------------------------------------------------------ key files


def new_seed() -> str:
    """A fresh user seed ("SU..."): the secret a role's process connects with."""
    import nkeys  # type: ignore[import-untyped]

    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def public_key(seed: str) -> str:
    """The public key ("U...") of a user seed; what the server's config names."""
    import nkeys

    try:
        public: bytes = nkeys.from_seed(bytearray(seed.strip().encode())).public_key
        return public.decode()
    except Exception as exc:  # nkeys raises its own errors (and ValueError/binascii ones) for a bad seed
        raise AuthError(f"not an nkey user seed ({type(exc).__name__})") from None


def read_seed(path: Path) -> str:
    """The seed in a key file, checked, with an error naming the file."""
    try:
        seed = path.read_text().strip()
    except OSError as exc:
        raise AuthError(f"cannot read the NATS key {path}: {exc.strerror}") from None
    try:
        public_key(seed)
    except AuthError as exc:
        raise AuthError(f"{path}: {exc}") from None
    return seed


def ensure_keys(directory: Path) -> tuple[dict[str, str], list[str]]:
    """One seed per role in `directory` (mode 0600); existing keys are kept, never overwritten.
    Returns ({role: public key}, roles whose key was created now)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    keys: dict[str, str] = {}
    created: list[str] = []
    for role in ROLES:
        path = key_path(directory, role)
        try:
            # O_EXCL: a key another `init` just wrote wins; ours is dropped, never written over it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            keys[role] = public_key(read_seed(path))
            continue
        seed = new_seed()
        with os.fdopen(fd, "w") as handle:
            handle.write(seed + "\n")
        keys[role] = public_key(seed)
        created.append(role)
    return keys, created


def write_server_config(directory: Path, keys: dict[str, str]) -> Path:
    """`directory/auth.conf`, rewritten from the keys (it holds no secret, only public keys)."""
    path = directory / SERVER_CONFIG
    temporary = path.with_suffix(".tmp")
    temporary.write_text(server_config(keys))
    temporary.replace(path)
    return path


def init(directory: Path) -> tuple[dict[str, str], list[str]]:
    """`aceorch auth init`: keys (kept when present) and the server's authorization config."""
    keys, created = ensure_keys(directory)
    write_server_config(directory, keys)
    return keys, created


def role_of(path: Path) -> str:
    """The role a key file is for, by its name (`DIR/<role>.nk` as `init` writes them); "" if unknown."""
    return path.stem if path.suffix == ".nk" and path.stem in ROLES else ""


# ------------------------------------------------------------------ denials, in words


@dataclass(frozen=True)
class Violation:
    action: str  # "publish" | "subscribe"
    subject: str


_VIOLATION = re.compile(r'Permissions Violation for (Publish|Subscription) to "?([^"\s]+)"?', re.IGNORECASE)


def violation(message: str) -> Violation | None:
    """The denied action in the server's `-ERR 'Permissions Violation for Publish to "x"'` (as the
    client library passes it on), None for any other error."""
    found = _VIOLATION.search(message)
    if found is None:
        return None
    return Violation("publish" if found.group(1).lower() == "publish" else "subscribe", found.group(2))


def meaning(denied: Violation) -> str:
    """What the denied subject is for, so the log line says what failed, not just where. (The server's
    error text reaches nats-py's callback lower-cased, so subjects are compared lower-cased.)"""
    subject = denied.subject.lower()

    def starts(*prefixes: str) -> bool:
        return subject.startswith(tuple(prefix.lower() for prefix in prefixes))

    if starts("$KV."):
        bucket = subject.split(".")[1]
        return f"a write to the {bucket} bucket (only the state-keeper writes records; others their own leases)"
    if starts("$JS.API.STREAM.CREATE.", "$JS.API.STREAM.UPDATE.", "$JS.API.STREAM.DELETE."):
        return "creating, changing or deleting a stream or bucket (admin only: run `aceorch setup`)"
    if starts("$JS.API.CONSUMER.CREATE.", "$JS.API.CONSUMER.DURABLE.CREATE."):
        return "creating a consumer (durable consumers are admin's; watches only on buckets the role reads)"
    if starts("$JS."):
        return "a JetStream API call the role is not granted"
    if starts(INBOX_ROOT, "_INBOX."):
        return "another client's reply inbox (each key has its own)"
    for endpoint in ENDPOINTS:
        if subject == endpoint.subject:
            if denied.action == "subscribe":
                return f"serving {subject} (only the {endpoint.service} role, in queue group {MICRO_QUEUE})"
            return f"a request to {endpoint.service}'s {subject} (not granted to this role)"
    for channel in CHANNELS:
        if subject == channel.subject:
            who = channel.publishers if denied.action == "publish" else channel.subscribers
            return f"{channel.kind} {subject}, which only {', '.join(who)} may {denied.action}"
    return "a subject outside this role's grants"


def explain(denied: Violation, role: str) -> str:
    """One log line: which subject, which role, what it means and where grants come from."""
    return (
        f"nats: permission denied: role {role or '(unknown key)'} may not {denied.action} {denied.subject!r} — "
        f"{meaning(denied)}; grants are in shared/auth.py (`aceorch auth show`)"
    )


def client_options(nkey_path: str) -> dict[str, str]:
    """`nats.connect` keyword arguments for the key in `nkey_path` ({} when empty): the seed and the
    key's private inbox prefix."""
    if not nkey_path:
        return {}
    seed = read_seed(Path(nkey_path))
    return {"nkeys_seed_str": seed, "inbox_prefix": inbox_prefix(public_key(seed))}


# ------------------------------------------------------------------ `aceorch auth show`


def summary(role: str, public_key: str) -> list[tuple[str, str]]:
    """A role's grants in a few lines a person reads: (what, subjects)."""
    if role == ADMIN:
        return [("everything", "creates and changes streams, buckets and durable consumers (`aceorch setup`)")]
    granted = grants(role, public_key)
    endpoints = {endpoint.subject for endpoint in ENDPOINTS}
    lines = [
        ("publish", [s for s in granted.publish if not s.startswith("$") and s not in endpoints]),
        ("request", [s for s in granted.publish if s in endpoints]),
        ("serve", [s.split()[0] for s in granted.subscribe if s.split()[0] in endpoints]),
        (
            "hear",
            [s for s in granted.subscribe if not s.startswith(("$", INBOX_ROOT)) and s.split()[0] not in endpoints],
        ),
        ("read", list(READS.get(role, ()))),
        ("write", [s for s in granted.publish if s.startswith("$KV.")]),
    ]
    return [(what, ", ".join(subjects)) for what, subjects in lines if subjects]


def grants_table(keys: dict[str, str], only: str | None = None) -> str:
    """ROLE, PUBLIC KEY, MAY: one block per role (every subject of one role with `only`)."""
    if only is not None:
        granted = grants(only, keys[only])
        parts = [f"{only} {keys[only]}", "publish allow:", *(f"  {s}" for s in granted.publish)]
        parts += ["publish deny:", *(f"  {s}" for s in granted.deny_publish)]
        parts += ["subscribe allow:", *(f"  {s}" for s in granted.subscribe)]
        parts.append(f"replies to requests: {'yes' if granted.allow_responses else 'no'}")
        return "\n".join(parts)
    role_width = max(len(role) for role in keys) + 2
    rows = [f"{'ROLE':<{role_width}}{'PUBLIC KEY':<58}MAY"]
    for role in ROLES:
        if role not in keys:
            continue
        for index, (what, subjects) in enumerate(summary(role, keys[role])):
            left = f"{role:<{role_width}}{keys[role]:<58}" if index == 0 else " " * (role_width + 58)
            rows.append(f"{left}{what}: {subjects}")
    return "\n".join(rows)


def refused(exc: BaseException) -> bool:
    """The server refused the connection's credentials (nats-py raises a plain error with the server's
    `-ERR 'Authorization Violation'` while connecting, AuthorizationError later)."""
    import nats.errors

    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


# ------------------------------------------------------------------ TLS (NATS across hosts)


def tls_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """A client TLS context trusting `ca` (None without one), presenting `cert`/`key` when given
    (a server with `verify: true` refuses clients without a certificate its CA signed)."""
    if not ca:
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AuthError(f"NATS TLS files ({ca}, {cert or '-'}, {key or '-'}): {exc}") from None
    return context


def tls_options(ca: str, cert: str = "", key: str = "") -> dict[str, ssl.SSLContext]:
    """`nats.connect` keyword arguments for TLS ({} without a CA)."""
    context = tls_context(ca, cert, key)
    return {} if context is None else {"tls": context}
