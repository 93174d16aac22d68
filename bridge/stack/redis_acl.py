"""The Redis ACL users of the secured local stack, in one place, and the least-privilege rules
of the bridge and of a Celery worker.

redis-server reads them from an ACL file (``aclfile``) that holds only SHA-256 hashes of the
passwords, never the passwords. The ``default`` user is off: every connection authenticates.

:func:`bridge_rules` and :func:`worker_rules` are exact: every command, key pattern and channel
pattern is one that the bridge (publishing through kombu, watching results, its dispatch
markers and rate-limit scripts, its remote-control check of the workers) or a worker (with
gossip, mingle, heartbeats and events on) was seen to use on Redis 7.0 with kombu 5.7 and
Celery 5.7, found by running both against users with fewer rules and reading ``ACL LOG``
until it stayed empty; ``tests/integration/test_redis_acl.py`` runs the bridge and a real
worker with exactly these rules. The README's "TLS and authentication" has them as a table.

Queues are keys too: the rules name them by pattern (:data:`QUEUE_PATTERN`, ``ckb-*`` on the
stack); kombu adds ``\\x06\\x16<priority>`` to a queue's name for priorities, so each queue
pattern ends in ``*``. The broker's database number is part of the remote-control and event
channel names (``/0.celery.pidbox``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

#: the stack's own health checks and the tests' direct reads: every command and key
ADMIN_USER = "ckb-admin"
BRIDGE_USER = "ckb-bridge"
WORKER_USER = "ckb-worker"

#: the Celery queues the stack's users may use: name yours ``ckb-...`` (the demo's is ckb-demo)
QUEUE_PATTERN = "ckb-*"
#: the broker's database (``celery.broker_url``)
BROKER_DB = 0

ADMIN_RULES = ("~*", "&*", "+@all")

#: connection set-up: AUTH, SELECT of the database, kombu's PING on connect
_CONNECT = ("+auth", "+select", "+ping")
#: kombu's binding tables (``_kombu.binding.<exchange>``), their deadlines and sweeps (Lua):
#: SADD/SMEMBERS/SREM and the scripts' ZADD, TIME, ZRANGEBYSCORE, EXISTS, DEL, ZREM
_KOMBU = ("+sadd", "+smembers", "+srem", "+zadd", "+zrem", "+zrangebyscore", "+time", "+exists",
          "+del", "+evalsha", "+script|load", "+script|exists", "+multi", "+exec")  # fmt: skip


def bridge_rules(queues: Iterable[str] = (QUEUE_PATTERN,), db: int = BROKER_DB) -> tuple[str, ...]:
    """The bridge's rules; ``queues`` are the key patterns of the Celery queues it sends to."""
    commands = (
        *_CONNECT,
        *_KOMBU,
        "+lpush",  # publish a task (kombu's Redis transport)
        "+llen",  # queue depths: the window follows the workers
        "+brpop",  # the replies to its remote-control check of the workers
        "+publish",  # that check's broadcast (fanout on a channel)
        "+psubscribe",  # results as Celery publishes them
        "+punsubscribe",
        "+mget",  # reconcile sweeps, dispatch ledger
        "+set",  # dispatch markers (inside the marker script, or a pipeline without it)
        "+hmget",  # rate-limit buckets (inside their script)
        "+hset",
        "+pexpire",
    )
    keys = (
        "~celery-task-meta-*",  # results
        "~ckb-dispatched-*",  # dispatch markers
        "~ckb-rate-*",  # rate-limit buckets
        "~_kombu.*",  # binding tables
        "~*.reply.celery.pidbox*",  # the reply queue of a remote-control call
        *(f"~{queue}" for queue in queues),
    )
    channels = ("&celery-task-meta-*", f"&/{db}.celery.pidbox")
    return ("resetkeys", "resetchannels", "-@all", *commands, *keys, *channels)


def worker_rules(queues: Iterable[str] = (QUEUE_PATTERN,), db: int = BROKER_DB) -> tuple[str, ...]:
    """A Celery worker's rules (consuming ``queues``, storing results, remote control, events)."""
    commands = (
        *_CONNECT,
        *_KOMBU,
        "+brpop",  # take tasks
        "+lpush",  # give back unacknowledged tasks; remote-control replies
        "+llen",
        "+hset",  # the unacked hash and index (acks late, visibility timeout)
        "+hget",
        "+hdel",
        "+zrange",
        "+zrevrangebyscore",
        "+get",  # results
        "+set",
        "+setex",
        "+publish",  # results, events, remote-control replies
        "+psubscribe",  # remote control and events (fanout)
        "+punsubscribe",
    )
    keys = (
        "~celery-task-meta-*",
        "~_kombu.*",
        "~unacked*",  # unacked, unacked_index, unacked_mutex
        "~*.reply.celery.pidbox*",
        "~*.celery.pidbox*",  # the worker's own remote-control queue
        "~celeryev.*",  # its event queue (gossip)
        *(f"~{queue}" for queue in queues),
    )
    channels = (
        "&celery-task-meta-*",
        f"&/{db}.celery.pidbox",
        f"&/{db}.celeryev/*",  # events it publishes
        f"&/{db}.celeryev/worker.*",  # gossip subscribes to this pattern, literally
    )
    return ("resetkeys", "resetchannels", "-@all", *commands, *keys, *channels)


#: the bridge publishes tasks (Celery broker, database 0), watches results (result backend),
#: marks sent tasks and runs rate-limit scripts; never administration, never another key
BRIDGE_RULES = bridge_rules()
#: a Celery worker takes tasks, stores results, answers remote control, sends events
WORKER_RULES = worker_rules()

RULES: Mapping[str, tuple[str, ...]] = {
    ADMIN_USER: ADMIN_RULES,
    BRIDGE_USER: BRIDGE_RULES,
    WORKER_USER: WORKER_RULES,
}


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_file_text(passwords: Mapping[str, str]) -> str:
    """The ACL file: ``default`` off, then each user of :data:`RULES` with its password hash."""
    lines = ["user default off"]
    for user, rules in RULES.items():
        lines.append(" ".join(["user", user, "on", f"#{password_hash(passwords[user])}", *rules]))
    return "\n".join(lines) + "\n"
