"""The Kafka ACLs of the secured local stack: who may do what, in one table.

The broker runs the KRaft ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``:
a principal may do only what an ACL below allows (the super user excepted). The stack cannot
know which topics a bridge will read, so the grants are *prefixed*: source topics start with
:data:`SOURCE_PREFIX`, dead-letter topics with :data:`DLQ_PREFIX` (set ``dlq_topic`` on each
route: the default ``<topic>.dlq`` of a ``demo.`` topic is a source-prefixed name the bridge
may read but not write), consumer groups with :data:`GROUP_PREFIX`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from bridge.stack.processes import StackError

log = logging.getLogger(__name__)

#: the administrator (super user): the stack's own checks, creating topics, producing samples
ADMIN_USER = "ckb-admin"
#: the bridge's least-privilege user
BRIDGE_USER = "ckb-bridge"
#: ``ckb dlq replay``'s least-privilege user
REPLAY_USER = "ckb-replay"
SOURCE_PREFIX = "demo."
DLQ_PREFIX = "dlq."
GROUP_PREFIX = "ckb-"
#: the replay's own groups (``ckb-replay.<dead-letter topic>`` unless ``--group``)
REPLAY_GROUP_PREFIX = "ckb-replay."


@dataclass(frozen=True)
class Grant:
    """ALLOW ``operations`` on every ``resource`` whose name starts with ``prefix``."""

    resource: str  # "topic" or "group"
    prefix: str
    operations: tuple[str, ...]
    why: str


#: what the bridge needs (README: "TLS and authentication" has the same table)
BRIDGE_GRANTS: tuple[Grant, ...] = (
    Grant("topic", SOURCE_PREFIX, ("READ", "DESCRIBE"),
          "consume the source topics; their end offsets for the lag metric"),
    Grant("group", GROUP_PREFIX, ("READ", "DESCRIBE"),
          "join the group and commit; its committed offsets for lag and ckb status"),
    Grant("topic", DLQ_PREFIX, ("WRITE", "DESCRIBE"), "write dead letters"),
)  # fmt: skip
#: only when ``dead_letters.create_topics`` is on (the default)
CREATE_DLQ_GRANT = Grant(
    "topic", DLQ_PREFIX, ("CREATE",), "create a missing dead-letter topic before its first write"
)

#: what ``ckb dlq replay`` needs: read dead letters, write them back, keep its progress
REPLAY_GRANTS: tuple[Grant, ...] = (
    Grant("topic", DLQ_PREFIX, ("READ", "DESCRIBE"), "read the dead letters"),
    Grant("group", REPLAY_GROUP_PREFIX, ("READ", "DESCRIBE"), "commit the replay's progress"),
    Grant(
        "topic", SOURCE_PREFIX, ("WRITE", "DESCRIBE"), "produce the letters back to their topics"
    ),
)

_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}


def bridge_grants(create_topics: bool = True) -> tuple[Grant, ...]:
    return (*BRIDGE_GRANTS, CREATE_DLQ_GRANT) if create_topics else BRIDGE_GRANTS


def acl_bindings(user: str, grants: Iterable[Grant]) -> list[AclBinding]:
    """The ALLOW bindings of ``grants`` for ``User:<user>`` from any host."""
    return [
        AclBinding(
            _RESOURCES[grant.resource],
            grant.prefix,
            ResourcePatternType.PREFIXED,
            f"User:{user}",
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for grant in grants
        for operation in grant.operations
    ]


def stack_bindings() -> list[AclBinding]:
    """Every ACL of the secured stack: the bridge's and the replay's."""
    return acl_bindings(BRIDGE_USER, bridge_grants()) + acl_bindings(REPLAY_USER, REPLAY_GRANTS)


def apply_acls(admin_config: Mapping[str, Any], bindings: list[AclBinding]) -> None:
    """Create ``bindings`` (creating an existing ACL again changes nothing)."""
    admin = AdminClient(dict(admin_config), logger=log)
    try:
        for future in admin.create_acls(bindings, request_timeout=30).values():
            future.result(timeout=30)
    except KafkaException as exc:
        raise StackError(f"creating the Kafka ACLs failed: {exc.args[0]}") from exc
