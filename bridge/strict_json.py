"""JSON as the bridge accepts it from producers it does not control.

``json.loads`` alone lets a hostile record through in several ways: nesting deep enough for a
``RecursionError`` (in the decoder, or later in kombu's encoder), integers past Python's
4,300-digit limit (a plain ``ValueError``), ``NaN``/``Infinity`` and ``1e999`` (not JSON; other
languages' workers reject them), and lone surrogate escapes (a ``str`` that cannot be encoded
to UTF-8 again). :func:`loads` turns each into :class:`RejectedJSONError` with a reason a user can
act on.

The checks cost nothing for ordinary documents: the walk over the decoded value only runs when
a cheap scan of the text says it could find something (more brackets than the depth limit, a
surrogate escape, an exponent of three digits).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: ``json.loads`` recurses once per nesting level; past this the codec is not safe
DEPTH_CEILING = 500

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)
_BIG_EXPONENT = re.compile(rb"[eE][+-]?[0-9]{3}", re.ASCII)


class RejectedJSONError(ValueError):
    """The text is not JSON the bridge passes on; the message says why (never the data)."""


def _no_constants(name: str) -> Any:
    raise RejectedJSONError(f"{name} is not JSON (only finite numbers are)")


def loads(raw: bytes, text: str, max_depth: int) -> Any:
    """Decode ``text`` (``raw`` is the same document as bytes, for the cheap scans)."""
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RejectedJSONError:
        raise
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise RejectedJSONError(f"not valid JSON ({where})") from None
    except RecursionError:
        raise RejectedJSONError(f"nested deeper than max_json_depth ({max_depth})") from None
    except ValueError as exc:  # Python's limit on integer digits
        raise RejectedJSONError(f"a number is too long ({exc})") from None
    deep = raw.count(b"[") + raw.count(b"{") > max_depth
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    overflow = _BIG_EXPONENT.search(raw) is not None
    if deep or surrogates or overflow:
        _walk(value, max_depth, surrogates, overflow)
    return value


def _walk(value: Any, max_depth: int, surrogates: bool, overflow: bool) -> None:
    """Check depth, strings and floats without recursion (the value may be very deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise RejectedJSONError(f"nested deeper than max_json_depth ({max_depth})")
            if surrogates:
                stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > max_depth:
                raise RejectedJSONError(f"nested deeper than max_json_depth ({max_depth})")
            stack.extend((child, depth + 1) for child in item)
        elif surrogates and isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RejectedJSONError(
                    "a string holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode"
                ) from None
        elif overflow and isinstance(item, float) and not math.isfinite(item):
            raise RejectedJSONError("a number is too large for a 64-bit float")
