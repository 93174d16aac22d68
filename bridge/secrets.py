"""Masking secrets before anything is printed, logged or written to a dead letter.

- :func:`mask` masks a settings dump: values under secret-looking keys, and any secret inside
  a string value (:func:`mask_text`).
- :func:`mask_text` masks secrets inside free text, such as a worker's exception message or
  traceback: URL credentials (``redis://user:****@host``), ``key=value`` / ``"key": "value"``
  pairs whose key names a secret (``password=****``, ``?password=****``,
  ``{'sasl.password': '****'}``) and bearer tokens.

Masking errs on the side of hiding too much: a password may hold ``/``, ``@`` or ``:``, so it
runs to the last ``@`` before the next blank, and an unquoted value to the next blank or ``&``.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "****"

#: words that make a key name a secret, wherever they appear in it
_SECRET_WORDS = (
    r"passw(?:or)?d|passphrase|secret|token|credential|private|jaas|api[_.-]?key"  # noqa: S105
    r"|oauthbearer\.config"
)
_SECRET_KEY = re.compile(rf"({_SECRET_WORDS}|\.key$|^key$|key\.pem$)", re.IGNORECASE)

# the password runs to the LAST "@" before a blank (as redis-py and urllib parse it, and it may
# hold "/" where a user forgot to percent-encode it), but never into a second URL ("://")
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):"
    r"(?P<pw>(?:(?!://)\S)+)@",
    re.IGNORECASE,
)
# name=value, name: value, 'name': 'value', ?name=value …: found by name, then kept or masked
# (the name is checked in Python, so a name that is no secret never swallows what follows it);
# a quoted value is bounded so that masking stays linear in the text's length
_PAIR_LEAD = re.compile(
    r"""(?<![\w.-])(?P<q>["'])?(?P<name>[\w.-]+)(?(q)(?P=q))(?:\s*=\s*|(?(q)\s*:\s*|:\s+))"""
)
_PAIR_VALUE = re.compile(r""""(?:[^"\\\n]|\\.){0,1024}"|'(?:[^'\\\n]|\\.){0,1024}'|[^\s&]+""")
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
_BEARER = re.compile(
    r"(?P<lead>\b(?:authorization\s*[:=]\s*(?:[a-z]+\s+)?|bearer\s+))(?P<value>[^\s'\",;]+)",
    re.IGNORECASE,
)


def _mask_pairs(text: str) -> str:
    parts = []
    done = 0  # text[:done] is in parts
    lead = _PAIR_LEAD.search(text)
    while lead is not None:
        value = _SECRET_NAME.search(lead["name"]) and _PAIR_VALUE.match(text, lead.end())
        if not value:
            lead = _PAIR_LEAD.search(text, lead.end())
            continue
        quoted = value[0][0] in "'\"" and value[0][-1] == value[0][0] and len(value[0]) > 1
        quote = value[0][0] if quoted else ""
        parts += [text[done : lead.end()], quote, MASK, quote]
        done = value.end()
        lead = _PAIR_LEAD.search(text, done)
    parts.append(text[done:])
    return "".join(parts)


def mask_text(text: str) -> str:
    """``text`` with URL credentials, ``key=value`` secrets and bearer tokens masked.

    For anything that may quote a secret and leaves the bridge: exception texts and
    tracebacks (dead letters, logs), error messages, printed configuration.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _mask_pairs(text)
    return _BEARER.sub(lambda m: f"{m['lead']}{MASK}", text)


def mask_url(url: str) -> str:
    """``redis://user:pw@host/0?password=pw`` → ``redis://user:****@host/0?password=****``."""
    return mask_text(url)


def password_needs_encoding(url: str) -> bool:
    """Whether a URL's password holds ``/``, ``?`` or ``#`` unencoded (of each URL of a
    ``;``-separated failover list): a URL parser ends the host part there and reads the
    password's start as the port, and says so in its error (``... as 'hun'``)."""
    for part in url.split(";"):
        scheme, found, rest = part.partition("://")
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if found and scheme and "@" not in authority and "@" in rest:
            return True
    return False


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def mask(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-looking keys and secrets in strings masked (recursively)."""
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    return value
