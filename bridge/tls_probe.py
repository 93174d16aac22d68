"""Why a TLS certificate is refused, asked again with Python's ``ssl``.

librdkafka says only "certificate verify failed" whether the broker's certificate is signed by
another CA, has expired or names another host; the fix differs. One handshake of our own
against the same address, with the same CA file and the host name check, gives OpenSSL's
verify result (``X509_V_ERR_*``). Answers are kept for a minute: the question comes again with
every failed reconnect.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

#: seconds a handshake may take, and an answer is kept
TIMEOUT = 2.0
KEEP = 60.0

_lock = threading.Lock()
_answers: dict[tuple[str, str], tuple[float, int | None]] = {}


def verify_result(address: str, cafile: str) -> int | None:
    """OpenSSL's verify result for the certificate served at ``address`` (``host:port``, the
    first of a comma-separated list) against ``cafile`` and the host name: 0 when it passes,
    None when it cannot be asked (no answer, not TLS, no such file)."""
    key = (address, cafile)
    now = time.monotonic()
    with _lock:
        kept = _answers.get(key)
    if kept is not None and now - kept[0] < KEEP:
        return kept[1]
    answer = _handshake(address, cafile)
    with _lock:
        _answers[key] = (now, answer)
    return answer


def _handshake(address: str, cafile: str) -> int | None:
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    host = host.strip("[]")
    try:
        context = ssl.create_default_context(cafile=cafile)
        with (
            socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return 0
    except ssl.SSLCertVerificationError as refused:
        return int(refused.verify_code)
    except (OSError, ValueError):
        return None
