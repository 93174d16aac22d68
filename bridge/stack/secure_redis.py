"""The Redis of the secured stack: TLS only, ACL users, checked as the stack's admin user."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from bridge.stack.processes import LOCALHOST
from bridge.stack.redis_acl import ADMIN_USER
from bridge.stack.redis_server import RedisNode
from bridge.stack.secure import SecureSetup


@dataclass(frozen=True)
class SecureRedisNode(RedisNode):
    """:class:`RedisNode` with ``port 0``, ``tls-port`` and the ACL file of ``secure``."""

    secure: SecureSetup = field(kw_only=True)

    @property
    def url(self) -> str:
        return f"rediss://{LOCALHOST}:{self.port}"

    def command(self, binary: str) -> list[str]:
        # later arguments win: ``--port 0`` replaces the plain port given before
        return [*super().command(binary), *self.secure.redis_arguments(self.port)]

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether PING, over TLS as the admin user, gets PONG."""
        client = redis.Redis(
            host=LOCALHOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **self.secure.redis_client(ADMIN_USER),
        )
        try:
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False
