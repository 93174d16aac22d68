"""A local Redis Sentinel set: a master, one replica and three sentinels on 127.0.0.1.

Every member is a :class:`~bridge.stack.redis_server.RedisNode` (the Debian ``redis-server``
binary; ``--sentinel`` runs it as a sentinel, no other package). The master is whatever node
the caller hands in (the stack's own Redis, or a test's); the replica follows it with
``--replicaof``; each sentinel runs from a config file of its own under the state dir (it
rewrites the file as it learns the set), written afresh when it starts. Quorum 2 of 3, a master
is down after :data:`DOWN_AFTER_MS` of silence.

In the local stack (``ckb stack up --broker sentinel``) the master is the stack's Redis; the
set's ports are recorded in ``<state>/sentinel.json`` (sentinels from 26379 when free), so
``up`` finds it again and ``down`` stops it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bridge.stack.paths import StatePaths
from bridge.stack.processes import LOCALHOST, StackError, free_port, port_accepts, port_in_use
from bridge.stack.redis_server import RedisNode

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

MASTER_NAME = "ckb-master"
DEFAULT_SENTINEL_PORT = 26379
QUORUM = 2
#: a master that does not answer this long is down (subjectively; objectively at quorum)
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 10000
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class SentinelClients:
    """How Celery and the bridge reach a Sentinel set: its URLs and options."""

    sentinel_ports: tuple[int, ...]
    master_name: str = MASTER_NAME

    def url(self, db: int) -> str:
        """The ``sentinel://`` URL of database ``db``, as kombu and Celery take it."""
        return ";".join(f"sentinel://{LOCALHOST}:{port}/{db}" for port in self.sentinel_ports)

    @property
    def options(self) -> dict[str, Any]:
        """The ``celery.options`` (and the workers' settings) these URLs need."""
        transport = {"master_name": self.master_name}
        return {
            "broker_transport_options": transport,
            "result_backend_transport_options": dict(transport),
        }


@dataclass(frozen=True)
class SentinelSet:
    paths: StatePaths
    master: RedisNode
    replica_port: int
    sentinel_ports: tuple[int, ...]
    master_name: str = MASTER_NAME

    @property
    def replica(self) -> RedisNode:
        follow = ("--replicaof", LOCALHOST, str(self.master.port))
        return RedisNode(self.paths, self.replica_port, "redis-replica", follow, "Redis replica")

    @property
    def sentinels(self) -> list[RedisNode]:
        return [
            RedisNode(
                self.paths,
                port,
                f"sentinel-{port}",
                (str(self.paths.root / f"sentinel-{port}" / "sentinel.conf"), "--sentinel"),
                "Redis Sentinel",
            )
            for port in self.sentinel_ports
        ]

    @property
    def data_nodes(self) -> tuple[RedisNode, RedisNode]:
        """The Redis servers (first started as master, then as replica), whichever is master
        now."""
        return self.master, self.replica

    @property
    def clients(self) -> SentinelClients:
        return SentinelClients(self.sentinel_ports, self.master_name)

    def url(self, db: int) -> str:
        return self.clients.url(db)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, progress: Progress | None = None) -> None:
        """Start the members that do not run yet and wait until the sentinels agree on the
        master and see its replica and each other."""
        report = progress or log.info
        for node in (self.master, self.replica):
            if not node.running():
                node.start(report)
        for sentinel in self.sentinels:
            if not sentinel.running():
                sentinel.home.mkdir(parents=True, exist_ok=True)
                (sentinel.home / "sentinel.conf").write_text(self._config())
                sentinel.start(report)
        self.wait_ready()

    def stop(self, kill: bool = False) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop(kill=kill)

    def running(self) -> bool:
        return all(node.running() for node in [self.master, self.replica, *self.sentinels])

    def _config(self) -> str:
        name = self.master_name
        return (
            f"sentinel monitor {name} {LOCALHOST} {self.master.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    # -- what the sentinels say ---------------------------------------------------------------

    def ask(self, port: int, *command: Any) -> Any:
        client = redis.Redis(host=LOCALHOST, port=port, socket_timeout=2, socket_connect_timeout=2)
        with client:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]

    def master_address(self) -> tuple[str, int] | None:
        """The master as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                host, found = self.ask(
                    port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                return host.decode(), int(found)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None

    def failover(self) -> None:
        """Promote the replica now (``SENTINEL FAILOVER``: no agreement of the others needed)."""
        self.ask(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.master_name)

    def _settled(self) -> bool:
        """Every sentinel sees the master up, the other sentinels, and one replica in sync."""
        for port in self.sentinel_ports:
            client: Any = redis.Redis(
                host=LOCALHOST, port=port, socket_timeout=2, socket_connect_timeout=2
            )
            try:
                with client:  # redis-py parses these replies into dicts
                    state = client.sentinel_master(self.master_name)
                    replicas = client.sentinel_slaves(self.master_name)
            except redis.RedisError:
                return False
            if state.get("is_sdown") or state.get("is_odown") or state.get("num-slaves") != 1:
                return False
            if state.get("num-other-sentinels") != len(self.sentinel_ports) - 1:
                return False
            if not replicas or replicas[0].get("master-link-status") != "ok":
                return False
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() > deadline:
                logs = ", ".join(str(node.log_file) for node in self.sentinels)
                raise StackError(
                    f"the Redis sentinels did not agree on master {self.master_name} within "
                    f"{timeout:.0f}s. Check {logs}."
                )
            time.sleep(0.2)


def _record(paths: StatePaths) -> Path:
    return paths.root / "sentinel.json"


def stack_sentinels(
    paths: StatePaths, master: RedisNode, create: bool = False
) -> SentinelSet | None:
    """The Sentinel set recorded in the state dir around the stack's Redis ``master``; with
    ``create`` and none recorded, a new one on free ports (sentinels from 26379), recorded."""
    try:
        data = json.loads(_record(paths).read_text())
        sentinels = tuple(int(port) for port in data["sentinels"])
        return SentinelSet(paths, master, int(data["replica"]), sentinels)
    except (OSError, ValueError, KeyError, TypeError):
        if not create:
            return None
    if type(master) is not RedisNode:  # the secured stack's Redis speaks TLS only
        raise StackError("--broker sentinel does not combine with --secure (a plain Redis only)")
    taken = {master.port}
    ports = []
    for offset in range(4):
        port = DEFAULT_SENTINEL_PORT + offset if offset < 3 else 0
        if port == 0 or port in taken or port_in_use(port):
            port = free_port()
        taken.add(port)
        ports.append(port)
    made = SentinelSet(paths, master, ports[3], tuple(ports[:3]))
    _record(paths).write_text(
        json.dumps({"replica": made.replica_port, "sentinels": list(made.sentinel_ports)}) + "\n"
    )
    return made


def ensure_stack_sentinels(
    paths: StatePaths, master: RedisNode, asked: bool, progress: Progress
) -> None:
    """``ckb stack up``: start the stack's Sentinel set when asked for, or when part of a
    recorded one still runs (as ``up`` does with RabbitMQ and Flower); else leave it be."""
    found = stack_sentinels(paths, master, create=asked)
    if found is not None and (asked or any(node.running() for node in found.sentinels)):
        found.start(progress)


def stop_stack_sentinels(paths: StatePaths, master: RedisNode) -> None:
    """``ckb stack down``: the sentinels and the replica (the master is the stack's Redis)."""
    found = stack_sentinels(paths, master)
    if found is not None:
        for node in [*found.sentinels, found.replica]:
            node.stop()


def running_sentinels(paths: StatePaths, master: RedisNode) -> SentinelClients | None:
    """The client settings of the stack's Sentinel set while its sentinels answer."""
    found = stack_sentinels(paths, master)
    if found is None or not all(port_accepts(port) for port in found.sentinel_ports):
        return None
    return found.clients


def sentinel_status(paths: StatePaths, master: RedisNode) -> dict[str, Any]:
    """``ckb stack status``: whether the recorded sentinels run, the broker URL through them,
    and the master they name now (after a failover: the replica's port)."""
    found = stack_sentinels(paths, master)
    if found is None:
        return {"running": False, "url": None, "master": None}
    address = found.master_address()
    return {
        "running": all(node.running() for node in found.sentinels),
        "url": found.url(0),
        "master": None if address is None else f"{address[0]}:{address[1]}",
    }
