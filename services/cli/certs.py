"""`aceorch auth init --tls`: a private CA, the server's certificate and one client certificate per
role, made with Debian's `openssl` (no download, no extra Python package).

Files under DIR/tls: ca.pem (+ ca.key, keep it off the servers), server.pem/server.key, and
<role>.pem/<role>.key; for a cluster's routes route-ca.pem (+ route-ca.key) and route.pem/route.key.
Private keys mode 0600. Existing files are kept, like the role keys (a directory made before the
route certificates existed gains them, nothing else changes). DIR/tls.conf is the `tls {}` block
for nats-server: it demands a client certificate signed by the CA (`verify: true`), on top of the
role's nkey.

Routes are mutual TLS: a node dials the others as a client, so the route certificate is valid for
both ends (serverAuth and clientAuth) and names the same hosts as the server's. Routes carry no
permissions, so a peer that passes their TLS is a node, past every grant: their CA is a second one
that signs nothing but the route certificate, and a role's client certificate does not get in.
Keep route.key on the servers only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shared.auth import ROLES, AuthError

DAYS = 825
SERVER_HOSTS = ("127.0.0.1", "localhost")
TLS_CONFIG = "tls.conf"
ROUTE, ROUTE_CA = "route", "route-ca"  # the cluster nodes' certificate for their routes, and its own CA


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise AuthError("openssl not found: install it (Debian: apt-get install openssl) to make TLS certificates")
    done = subprocess.run([binary, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AuthError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def _authority(directory: Path, name: str, subject: str) -> list[str]:
    """A self-signed CA, name.pem / name.key; [] if it exists already, else [name]."""
    if (directory / f"{name}.pem").exists():
        return []
    _openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem"), "-days", str(DAYS * 4),
        "-subj", subject,
    )  # fmt: skip
    os.chmod(directory / f"{name}.key", 0o600)
    return [name]


def _issue(directory: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> list[str]:
    """name.pem / name.key signed by the CA `ca`; [] if they exist already, else [name]."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    if cert.exists() and key.exists():
        return []
    with tempfile.TemporaryDirectory() as scratch:
        request, ext = Path(scratch) / "req.csr", Path(scratch) / "ext.cnf"
        ext.write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", subject,
        )  # fmt: skip
        key.chmod(0o600)
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(directory / f"{ca}.pem"), "-CAkey", str(directory / f"{ca}.key"),
            "-CAcreateserial", "-out", str(cert), "-days", str(DAYS), "-extfile", str(ext),
        )  # fmt: skip
    return [name]


def make_certificates(auth_dir: Path, hosts: Sequence[str] = SERVER_HOSTS) -> list[str]:
    """The CA, the server's and every role's certificate under auth_dir/tls; what was made now."""
    directory = auth_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    made = _authority(directory, "ca", "/O=aceorch/CN=aceorch NATS CA")
    made += _authority(directory, ROUTE_CA, "/O=aceorch/CN=aceorch NATS route CA")
    names = ",".join(
        f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}" for host in hosts
    )
    made += _issue(directory, "server", "/O=aceorch/CN=nats", f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    made += _issue(
        directory,
        ROUTE,
        "/O=aceorch/CN=nats route",
        f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n",
        ca=ROUTE_CA,
    )
    for role in ROLES:
        made += _issue(directory, role, f"/O=aceorch/CN={role}", "extendedKeyUsage=clientAuth\n")
    (auth_dir / TLS_CONFIG).write_text(
        "# Written by `aceorch auth init --tls`: clients need a certificate signed by this CA, and their role key.\n"
        "tls {\n"
        f'  cert_file: "{directory / "server.pem"}"\n'
        f'  key_file: "{directory / "server.key"}"\n'
        f'  ca_file: "{directory / "ca.pem"}"\n'
        "  verify: true\n"
        "}\n"
    )
    return made
