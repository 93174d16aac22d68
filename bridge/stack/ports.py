"""What a local stack's addresses are (``StackInfo``) and the ports it remembers
(``StackPorts``, in ``stack.json``)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bridge.stack.processes import free_port, port_in_use
from bridge.stack.secure import SecureClients
from bridge.stack.sentinel import SentinelClients

CONTROLLER_PORT_OFFSET = 1000
_CONTROLLER_LINE = re.compile(r"^controller\.quorum\.bootstrap\.servers=.*:(\d+)\s*$", re.M)


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap: str
    redis_url: str
    state_dir: Path
    flower_url: str | None = None
    #: the RabbitMQ broker, when the stack runs one (``--broker rabbitmq``)
    rabbitmq_url: str | None = None
    #: the users, passwords and certificates of a secured stack (``ckb stack up --secure``)
    secure: SecureClients | None = None
    #: SQLAlchemy's URL of PostgreSQL, when the stack runs it as the result backend
    postgres_url: str | None = None
    #: the Sentinel set around the stack's Redis, when it runs (``--broker sentinel``)
    sentinel: SentinelClients | None = None
    #: Celery's ``rpc://`` result backend (replies over the RabbitMQ broker) instead of Redis
    rpc_results: bool = False

    @property
    def broker_url(self) -> str:
        """The Celery broker: RabbitMQ when the stack runs it, else Redis database 0 (through
        the sentinels when they run)."""
        return self.rabbitmq_url or self._redis_db(0)

    @property
    def result_backend(self) -> str:
        """Celery's result backend: PostgreSQL when the stack runs it, ``rpc://`` when asked
        for, else Redis database 1."""
        if self.rpc_results:
            return "rpc://"
        return f"db+{self.postgres_url}" if self.postgres_url else self._redis_db(1)

    @property
    def celery_options(self) -> dict[str, Any]:
        """The Celery settings these URLs need (a ``sentinel://`` URL's ``master_name``)."""
        needed = self.sentinel.options if self.sentinel is not None else {}
        urls = {"broker_transport_options": self.broker_url}
        urls["result_backend_transport_options"] = self.result_backend
        return {key: value for key, value in needed.items() if urls[key].startswith("sentinel:")}

    def _redis_db(self, db: int) -> str:
        return f"{self.redis_url}/{db}" if self.sentinel is None else self.sentinel.url(db)


@dataclass(frozen=True)
class StackPorts:
    """The ports of a stack, remembered in ``stack.json``."""

    kafka: int
    controller: int
    redis: int
    flower: int | None = None  # None: no Flower was started with this stack
    #: AMQP, Erlang distribution and epmd ports of RabbitMQ; None: no RabbitMQ here
    rabbitmq: int | None = None
    rabbitmq_dist: int | None = None
    epmd: int | None = None
    #: PostgreSQL (the result backend); None: no PostgreSQL here
    postgres: int | None = None

    @classmethod
    def from_file(cls, path: Path) -> StackPorts | None:
        try:
            data = json.loads(path.read_text())
            names = ("flower", "rabbitmq", "rabbitmq_dist", "epmd", "postgres")
            optional = [data.get(k) for k in names]
            return cls(
                int(data["kafka"]),
                int(data["controller"]),
                int(data["redis"]),
                *(None if port is None else int(port) for port in optional),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


def pick_controller_port(kafka_port: int, redis_port: int) -> int:
    """``kafka_port + 1000`` when usable and free, else any free port."""
    preferred = kafka_port + CONTROLLER_PORT_OFFSET
    if preferred <= 65535 and preferred != redis_port and not port_in_use(preferred):
        return preferred
    return free_port()


def controller_port_from_properties(text: str) -> int | None:
    match = _CONTROLLER_LINE.search(text)
    return int(match.group(1)) if match else None
