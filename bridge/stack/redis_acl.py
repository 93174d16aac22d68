"""The Redis ACL users of the secured local stack, in one place.

redis-server reads them from an ACL file (``aclfile``) that holds only SHA-256 hashes of the
passwords, never the passwords. The ``default`` user is off: every connection authenticates.

:data:`BRIDGE_RULES` and :data:`WORKER_RULES` are the working set the stack starts with; the
README's "TLS and authentication" section explains each rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

#: the stack's own health checks and the tests' direct reads: every command and key
ADMIN_USER = "ckb-admin"
BRIDGE_USER = "ckb-bridge"
WORKER_USER = "ckb-worker"

ADMIN_RULES = ("~*", "&*", "+@all")
#: the bridge publishes tasks (Celery broker, database 0), watches results (result backend),
#: marks sent tasks and runs rate-limit scripts; never administration
BRIDGE_RULES = ("~*", "&*", "+@all", "-@dangerous", "+info")
#: a Celery worker takes tasks, stores results, answers remote control
WORKER_RULES = ("~*", "&*", "+@all", "-@dangerous", "+info")

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
