"""Rate limits per route for the whole consumer group: one token bucket in Redis per route.

Why Redis and not a split by owned partitions: a split gives each bridge ``rate * owned /
partitions``, which is the group's rate only while records spread evenly over partitions and
every rebalance is reflected at once; one hot partition would get a fraction of the rate while
the others idle. A shared bucket holds the group to the rate whatever the spread, and survives
rebalances and scaling without coordination. The bucket lives in the result backend's Redis,
which every bridge already uses; its clock is Redis's (``TIME``), so bridges' clocks do not
matter.

Cost: one ``EVALSHA`` per route per turn that has records to send, asking for all of them at
once; while a route's bucket is empty the engine holds its records (no call) until the next
token is due, at least ``MIN_WAIT``. So a route at its limit costs each bridge at most five
calls a second, whatever the rate (measured: 3 bridges at 50/s, about 0.3 calls per record).

Records that wait for a token are not sent: their tasks' timers never start, their partitions'
order is kept (they go back in offset order), and their partitions pause at the usual caps.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

import redis

from bridge.access_problems import RedisAccess
from bridge.io_retry import OutageLog

log = logging.getLogger(__name__)

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}

#: seconds a route waits when Redis cannot be asked (nothing is sent unlimited)
UNAVAILABLE_WAIT = 1.0
#: shortest wait after a refusal: tokens accrue meanwhile and go out together, so a busy
#: route costs each bridge at most five bucket calls a second instead of one per token
MIN_WAIT = 0.2

# KEYS[1]: the bucket. ARGV: tokens per second, burst, tokens wanted.
# Returns {granted, seconds until the next token (as text: Lua numbers become integers)}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
local wait = 0
if granted < want then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""


def parse_rate(text: str) -> float:
    """Tokens per second of a Celery-style rate: ``"100/s"``, ``"30/m"``, ``"5/h"``, ``"10"``
    (per second). Raises ValueError with the accepted forms."""
    match = _RATE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f'{text!r} is not a rate: write N/s, N/m or N/h with N > 0 (e.g. "100/s")')
    return float(match.group(1)) / _PER[match.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    #: seconds until the next token, when fewer were granted than wanted
    wait: float


class TokenBuckets:
    """The group's buckets, one per route, in Redis."""

    def __init__(self, client: Any, group: str, access: RedisAccess | None = None) -> None:
        self._client = client
        self._access = access
        self._group = group
        self._script = client.register_script(_TAKE)
        self._outage = OutageLog(log, "Redis (rate limits)")

    def key(self, route_name: str) -> str:
        digest = hashlib.sha1(route_name.encode(), usedforsecurity=False).hexdigest()[:16]
        return f"ckb-rate-{self._group}-{digest}"

    def take(self, route_name: str, per_second: float, burst: int, wanted: int) -> Grant:
        """Up to ``wanted`` tokens of the route's bucket; none while Redis cannot be asked."""
        try:
            granted, wait = self._script(
                keys=[self.key(route_name)], args=[repr(per_second), burst, wanted]
            )
        except redis.RedisError as exc:
            limits = "applying rate limits"
            if self._access is None or not self._access.check(exc, limits, keys="ckb-rate-*"):
                self._outage.failed(exc)
            return Grant(0, UNAVAILABLE_WAIT)
        self._outage.recovered()
        if self._access is not None:
            self._access.fine()
        granted = int(granted)
        return Grant(granted, 0.0 if granted == wanted else max(float(wait), MIN_WAIT))
