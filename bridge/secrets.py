"""Masking secrets before anything is printed or logged."""

from __future__ import annotations

import re
from typing import Any

MASK = "****"
_SECRET_KEY = re.compile(
    r"(password|secret|token|credential|\.key$|^key$|key\.pem$|private|jaas)", re.IGNORECASE
)
# the password runs to the LAST "@" of the authority, as redis-py and urllib parse it
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<pw>[^/]+)@")


def mask_url(url: str) -> str:
    """``redis://user:pw@host`` → ``redis://user:****@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def mask(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-looking keys and URL passwords masked (recursively)."""
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return mask_url(value)
    return value
