"""`aceorch auth init --tls`: a private CA, the server's certificate and one client certificate per
role, made with Debian's `openssl` (no download, no extra Python package).

Files under DIR/tls: ca.pem (+ ca.key, keep it off the servers), server.pem/server.key, and
<role>.pem/<role>.key; private keys mode 0600. Existing files are kept, like the role keys.
DIR/tls.conf is the `tls {}` block for nats-server: it demands a client certificate signed by
the CA (`verify: true`), on top of the role's nkey.
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


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise AuthError("openssl not found: install it (Debian: apt-get install openssl) to make TLS certificates")
    done = subprocess.run([binary, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AuthError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def _issue(directory: Path, name: str, subject: str, extensions: str) -> list[str]:
    """name.pem / name.key signed by the CA; [] if they exist already, else [name]."""
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
            "x509", "-req", "-in", str(request), "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
            "-CAcreateserial", "-out", str(cert), "-days", str(DAYS), "-extfile", str(ext),
        )  # fmt: skip
    return [name]


def make_certificates(auth_dir: Path, hosts: Sequence[str] = SERVER_HOSTS) -> list[str]:
    """The CA, the server's and every role's certificate under auth_dir/tls; what was made now."""
    directory = auth_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    made: list[str] = []
    if not (directory / "ca.pem").exists():
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"), "-days", str(DAYS * 4),
            "-subj", "/O=aceorch/CN=aceorch NATS CA",
        )  # fmt: skip
        os.chmod(directory / "ca.key", 0o600)
        made.append("ca")
    names = ",".join(
        f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}" for host in hosts
    )
    made += _issue(directory, "server", "/O=aceorch/CN=nats", f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
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
