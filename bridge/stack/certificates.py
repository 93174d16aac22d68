"""A private CA and the certificates it signs, made with ``openssl`` for the secured local stack.

>>> certs = ensure_certificates(state_dir / "tls")     # idempotent: made once, then reused
>>> certs.ca, certs.server.cert, certs.server.key, certs.client.cert

Every certificate is valid for ``127.0.0.1`` and ``localhost`` (subjectAltName), so clients
that check the host name accept it. Keys are unencrypted PKCS#8 PEM files (Kafka's ``PEM``
keystore reads them; so do redis-server and Python's ``ssl``), readable by the owner only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bridge.stack.processes import StackError, file_lock

#: how long the certificates live; the local stack is for trying things out
VALID_DAYS = 825
SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"
CA_NAME = "ckb-local-ca"
#: the subject of the server certificate, also the broker's own principal on its SSL listener
SERVER_NAME = "ckb-server"
CLIENT_NAME = "ckb-client"
_NEW_KEY = ("-newkey", "rsa:2048", "-nodes")
_TIMEOUT = 60.0


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key; ``bundle`` holds both (key first), for Kafka's PEM
    keystore."""

    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True)
class Certificates:
    """What :func:`ensure_certificates` made: the CA certificate and two signed pairs."""

    directory: Path
    ca: Path
    ca_key: Path
    server: KeyPair
    client: KeyPair

    def complete(self) -> bool:
        pairs = (self.server, self.client)
        files = (self.ca, self.ca_key, *(p for pair in pairs for p in (pair.cert, pair.key)))
        return all(f.is_file() for f in (*files, self.server.bundle, self.client.bundle))


def certificates_in(directory: Path) -> Certificates:
    """The layout of ``directory`` (made or not)."""

    def pair(name: str) -> KeyPair:
        return KeyPair(
            directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}-bundle.pem"
        )

    return Certificates(
        directory, directory / "ca.pem", directory / "ca.key", pair("server"), pair("client")
    )


def find_openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise StackError("openssl not found on PATH; install it with: sudo apt-get install openssl")
    return found


def ensure_certificates(directory: Path) -> Certificates:
    """The CA and the server and client certificates in ``directory``, made when missing.

    Idempotent and safe against a concurrent call (a lock file); a half-made set from an
    interrupted run is made again from scratch.
    """
    certs = certificates_in(directory)
    if certs.complete():
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with file_lock(directory / ".lock"):
        if not certs.complete():
            _make(certs, find_openssl())
    return certs


def _make(certs: Certificates, openssl: str) -> None:
    where = certs.directory
    days = ("-days", str(VALID_DAYS))
    ca_subject = ("-subj", f"/CN={CA_NAME}", "-keyout", certs.ca_key.name, "-out", certs.ca.name)
    _openssl(openssl, where, "req", "-x509", *_NEW_KEY, *days, *ca_subject)
    extensions = where / "san.ext"
    extensions.write_text(SAN + "\n")
    signer = ("-CA", certs.ca.name, "-CAkey", certs.ca_key.name, "-CAcreateserial", *days)
    for pair, name in ((certs.server, SERVER_NAME), (certs.client, CLIENT_NAME)):
        request = where / f"{pair.cert.stem}.csr"
        subject = ("-subj", f"/CN={name}", "-keyout", pair.key.name, "-out", request.name)
        _openssl(openssl, where, "req", *_NEW_KEY, *subject)
        signed = ("-in", request.name, "-extfile", extensions.name, "-out", pair.cert.name)
        _openssl(openssl, where, "x509", "-req", *signer, *signed)
        request.unlink()
        # key first, then the certificate: what a PEM keystore expects in one file
        pair.bundle.write_text(pair.key.read_text() + pair.cert.read_text())
    for key in (
        certs.ca_key,
        certs.server.key,
        certs.client.key,
        certs.server.bundle,
        certs.client.bundle,
    ):
        os.chmod(key, 0o600)


def _openssl(openssl: str, cwd: Path, *args: str) -> None:
    try:
        done = subprocess.run(
            [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackError(f"openssl {args[0]} could not run: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        raise StackError(f"openssl {args[0]} failed (exit {done.returncode}) in {cwd}:\n{tail}")
