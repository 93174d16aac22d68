"""``LocalStack``: a local Kafka (KRaft) + Redis pair, optionally RabbitMQ (the broker),
PostgreSQL (the result backend) and Flower, in one state dir."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.stack import sentinel as stack_sentinel
from bridge.stack.flower import FlowerNode
from bridge.stack.kafka import KafkaNode, is_formatted
from bridge.stack.paths import StatePaths, default_state_dir
from bridge.stack.ports import (
    CONTROLLER_PORT_OFFSET,
    StackInfo,
    StackPorts,
    controller_port_from_properties,
    pick_controller_port,
)
from bridge.stack.postgres import PostgresNode
from bridge.stack.processes import (
    LOCALHOST,
    StackError,
    file_lock,
    free_port,
    port_accepts,
    port_in_use,
)
from bridge.stack.rabbitmq import RabbitNode
from bridge.stack.redis_server import RedisNode
from bridge.stack.secure import SecureClients, SecureSetup
from bridge.stack.secure_redis import SecureRedisNode

__all__ = ["LocalStack", "StackInfo", "StackPorts", "controller_port_from_properties"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class LocalStack:
    """Start, stop and inspect the local Kafka + Redis (+ Flower) of one state directory.

    ``flower_port`` asks ``up`` for Flower too, ``rabbitmq_port`` for RabbitMQ (then the
    Celery broker), ``postgres_port`` for PostgreSQL (then the result backend); without them
    ``up`` leaves a running Flower, RabbitMQ or PostgreSQL be. ``sentinel`` asks for a Redis
    Sentinel set around the stack's Redis (:mod:`bridge.stack.sentinel`).
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        kafka_port: int = 9092,
        redis_port: int = 6379,
        flower_port: int | None = None,
        rabbitmq_port: int | None = None,
        secure: bool = False,
        postgres_port: int | None = None,
        sentinel: bool = False,
    ) -> None:
        root = default_state_dir() if state_dir is None else Path(state_dir)
        self.state_dir = root.expanduser().resolve()
        self.paths = StatePaths(self.state_dir)
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.flower_port = flower_port
        self.rabbitmq_port = rabbitmq_port
        self.postgres_port = postgres_port
        self.sentinel = sentinel  # a Sentinel set around the stack's Redis (the master)
        # a state dir once secured stays secured (its Kafka storage holds the SCRAM users)
        setup = SecureSetup(self.state_dir)
        self.asked_secure = secure
        self.secure = setup if secure or setup.secrets_dir.is_dir() else None

    # -- public API ---------------------------------------------------------------------------

    def up(self, progress: Progress | None = None) -> StackInfo:
        """Start whatever is not running yet and wait until all answer; idempotent."""
        report = progress or log.info
        with file_lock(self.paths.lock_file):
            ports = self._plan(StackPorts.from_file(self.paths.stack_file))
            self._check_mode(ports)
            ports.save(self.paths.stack_file)
            self._ensure_redis(self._redis(ports), report)
            stack_sentinel.ensure_stack_sentinels(
                self.paths, self._redis(ports), self.sentinel, report
            )
            rabbit = self._rabbit(ports)
            if rabbit is not None:
                self._ensure_rabbitmq(rabbit, report)
            postgres = self._postgres(ports)
            if postgres is not None and postgres.pid() is None:
                self._check_free("PostgreSQL", postgres.port, "--postgres-port")
                postgres.start(report)
            self._ensure_kafka(self._kafka(ports), report)
            flower = self._flower(ports)
            if flower is not None:
                self._ensure_flower(flower, report)
            info = self._info(ports)
            if info.secure is not None:
                info.secure.write_files()
            return info

    def down(self) -> None:
        """Stop Flower, Kafka, RabbitMQ, then Redis (SIGTERM, SIGKILL after a timeout);
        idempotent."""
        if not self.state_dir.is_dir():
            return
        with file_lock(self.paths.lock_file):
            ports = self._known_ports()
            flower = self._flower(ports)
            if flower is not None:
                flower.stop()
            self._kafka(ports).stop()
            rabbit = self._rabbit(ports)
            if rabbit is not None:
                rabbit.stop()
            postgres = self._postgres(ports)
            if postgres is not None:
                postgres.stop()
            stack_sentinel.stop_stack_sentinels(self.paths, self._redis(ports))
            self._redis(ports).stop()

    def status(self) -> dict[str, Any]:
        ports = self._known_ports()
        kafka, redis_node = self._kafka(ports), self._redis(ports)
        kafka_pid, redis_pid = kafka.pid(), redis_node.pid()
        return {
            "kafka": {
                "running": kafka_pid is not None and port_accepts(ports.kafka),
                "bootstrap": kafka.bootstrap,
                "pid": kafka_pid,
            },
            "redis": {
                "running": redis_pid is not None and port_accepts(ports.redis),
                "url": redis_node.url,
                "pid": redis_pid,
            },
            "flower": _status_of(self._flower(ports)),
            "rabbitmq": _status_of(self._rabbit(ports)),
            "sentinel": stack_sentinel.sentinel_status(self.paths, redis_node),
            "postgres": PostgresNode.status_of(self._postgres(ports)),
            "state_dir": str(self.state_dir),
        }

    def info(self) -> StackInfo:
        """Addresses of this state directory's stack (running or not)."""
        return self._info(self._known_ports())

    def stop_kafka(self, kill: bool = False) -> None:
        """Stop the broker only (SIGKILL right away when ``kill``)."""
        with file_lock(self.paths.lock_file):
            self._kafka(self._started_ports()).stop(kill=kill)

    def start_kafka(self) -> None:
        """Start the broker of a stack that was brought ``up`` before; waits until it answers."""
        with file_lock(self.paths.lock_file):
            self._ensure_kafka(self._kafka(self._started_ports()), log.info)

    def stop_redis(self, kill: bool = False) -> None:
        with file_lock(self.paths.lock_file):
            self._redis(self._started_ports()).stop(kill=kill)

    def start_redis(self) -> None:
        with file_lock(self.paths.lock_file):
            self._ensure_redis(self._redis(self._started_ports()), log.info)

    def stop_rabbitmq(self, kill: bool = False) -> None:
        with file_lock(self.paths.lock_file):
            rabbit = self._rabbit(self._started_ports())
            if rabbit is not None:
                rabbit.stop(kill=kill)

    def start_rabbitmq(self) -> None:
        with file_lock(self.paths.lock_file):
            rabbit = self._rabbit(self._started_ports())
            if rabbit is None:
                raise StackError(f"the stack in {self.state_dir} was started without RabbitMQ")
            self._ensure_rabbitmq(rabbit, log.info)

    def stop_flower(self) -> None:
        """Stop Flower only; Kafka and Redis keep running."""
        with file_lock(self.paths.lock_file):
            flower = self._flower(self._known_ports())
            if flower is not None:
                flower.stop()

    # -- internals ----------------------------------------------------------------------------

    def _kafka(self, ports: StackPorts) -> KafkaNode:
        return KafkaNode(self.paths, ports.kafka, ports.controller, secure=self.secure)

    def _redis(self, ports: StackPorts) -> RedisNode:
        if self.secure is not None:
            return SecureRedisNode(self.paths, ports.redis, secure=self.secure)
        return RedisNode(self.paths, ports.redis)

    def _check_mode(self, ports: StackPorts) -> None:
        if self.secure is not None:
            extras = any(
                port is not None for port in (ports.flower, ports.rabbitmq, ports.postgres)
            )
            self.secure.check(self.asked_secure, is_formatted(self.paths.kafka_data), extras)

    def _flower(self, ports: StackPorts) -> FlowerNode | None:
        if ports.flower is None:
            return None
        rabbit = self._rabbit(ports)
        broker = None if rabbit is None else rabbit.url
        return FlowerNode(self.paths, ports.flower, self._redis(ports).url, broker)

    def _rabbit(self, ports: StackPorts) -> RabbitNode | None:
        if ports.rabbitmq is None or ports.rabbitmq_dist is None or ports.epmd is None:
            return None
        return RabbitNode(self.paths, ports.rabbitmq, ports.rabbitmq_dist, ports.epmd)

    def _postgres(self, ports: StackPorts | None) -> PostgresNode | None:
        port = None if ports is None else ports.postgres
        return None if port is None else PostgresNode(self.paths, port)

    def _info(self, ports: StackPorts) -> StackInfo:
        flower, rabbit, postgres = self._flower(ports), self._rabbit(ports), self._postgres(ports)
        bootstrap = f"{LOCALHOST}:{ports.kafka}"
        secure = None if self.secure is None else SecureClients(self.secure, bootstrap, ports.redis)
        return StackInfo(
            kafka_bootstrap=bootstrap,
            redis_url=self._redis(ports).url,
            secure=secure,
            state_dir=self.state_dir,
            flower_url=None if flower is None else flower.url,
            rabbitmq_url=None if rabbit is None else rabbit.url,
            postgres_url=None if postgres is None else postgres.url,
            sentinel=stack_sentinel.running_sentinels(self.paths, self._redis(ports)),
        )

    def _known_ports(self) -> StackPorts:
        saved = StackPorts.from_file(self.paths.stack_file)
        if saved is not None:
            return saved
        controller = self.kafka_port + CONTROLLER_PORT_OFFSET
        return StackPorts(self.kafka_port, controller, self.redis_port)

    def _started_ports(self) -> StackPorts:
        saved = StackPorts.from_file(self.paths.stack_file)
        if saved is None:
            raise StackError(f"no stack was started in {self.state_dir}; run `ckb stack up` first")
        return saved

    def _plan(self, saved: StackPorts | None) -> StackPorts:
        """The ports for this ``up``, checked before anything starts.

        StackError when they clash with the stack already running here, or with another process.
        """
        if self.kafka_port == self.redis_port:
            raise StackError(f"Kafka and Redis cannot share port {self.kafka_port}")
        if saved is not None and self._kafka(saved).running():
            self._check_same("Kafka", saved.kafka, self.kafka_port, "--kafka-port")
            controller = saved.controller
        else:
            self._check_free("Kafka", self.kafka_port, "--kafka-port")
            controller = self._controller_port(saved)
        if saved is not None and self._redis(saved).running():
            self._check_same("Redis", saved.redis, self.redis_port, "--redis-port")
        else:
            self._check_free("Redis", self.redis_port, "--redis-port")
        flower = self._plan_flower(saved, controller)
        rabbit = self._plan_rabbitmq(saved, (controller, flower))
        taken = (self.kafka_port, self.redis_port, controller, flower, *rabbit)
        postgres = self._plan_port(
            "PostgreSQL", "--postgres-port", self._postgres(saved), self.postgres_port, taken
        )
        ports = StackPorts(self.kafka_port, controller, self.redis_port, flower, *rabbit)
        return dataclasses.replace(ports, postgres=postgres)

    def _plan_rabbitmq(
        self, saved: StackPorts | None, taken: tuple[int | None, ...]
    ) -> tuple[int | None, int | None, int | None]:
        """A running RabbitMQ keeps its ports; else the AMQP port asked for (if any), with a
        free distribution port and a free port for its own epmd."""
        running = self._rabbit(saved) if saved is not None else None
        if running is not None and running.running():
            if self.rabbitmq_port is not None:
                self._check_same("RabbitMQ", running.port, self.rabbitmq_port, "--rabbitmq-port")
            return running.port, running.dist_port, running.epmd_port
        if self.rabbitmq_port is None:
            return None, None, None
        if self.rabbitmq_port in (self.kafka_port, self.redis_port, *taken):
            raise StackError(
                f"RabbitMQ cannot share port {self.rabbitmq_port} with Kafka, Redis or Flower; "
                "choose another with --rabbitmq-port N"
            )
        self._check_free("RabbitMQ", self.rabbitmq_port, "--rabbitmq-port")
        return self.rabbitmq_port, free_port(), free_port()

    def _plan_flower(self, saved: StackPorts | None, controller: int) -> int | None:
        running = self._flower(saved) if saved is not None else None
        taken = (self.kafka_port, self.redis_port, controller)
        return self._plan_port("Flower", "--flower-port", running, self.flower_port, taken)

    def _plan_port(
        self, name: str, flag: str, running: Any, wanted: int | None, taken: tuple[int | None, ...]
    ) -> int | None:
        """A running node keeps its port; else the one asked for (if any), when free."""
        if running is not None and running.running():
            if wanted is not None:
                self._check_same(name, running.port, wanted, flag)
            return int(running.port)
        if wanted is None:
            return None
        if wanted in taken:
            raise StackError(f"{name} cannot share port {wanted}; choose another with {flag} N")
        self._check_free(name, wanted, flag)
        return wanted

    def _check_same(self, name: str, running: int, wanted: int, flag: str) -> None:
        if running != wanted:
            raise StackError(
                f"a stack in {self.state_dir} already runs {name} on {LOCALHOST}:{running}, "
                f"but {flag} {wanted} was asked for. Use the running one, stop it first with "
                f"`ckb stack down --state-dir {self.state_dir}`, or choose another --state-dir."
            )

    def _controller_port(self, saved: StackPorts | None) -> int:
        """A formatted KRaft quorum keeps its controller port; a fresh one gets a new port."""
        if not is_formatted(self.paths.kafka_data):
            return pick_controller_port(self.kafka_port, self.redis_port)
        port = saved.controller if saved is not None else self._controller_from_properties()
        if port_in_use(port):
            raise StackError(
                f"the Kafka controller port {port} (fixed when {self.paths.kafka_data} was "
                "formatted) is in use by another process. Free it, or start afresh: "
                f"`ckb stack down` and delete {self.paths.kafka_dir}."
            )
        return port

    def _controller_from_properties(self) -> int:
        try:
            port = controller_port_from_properties(self.paths.kafka_properties.read_text())
        except OSError:
            port = None
        if port is None:
            raise StackError(
                f"{self.paths.stack_file} is missing, so the controller port of the formatted "
                f"Kafka storage is unknown. Delete {self.paths.kafka_dir} and run up again."
            )
        return port

    def _check_free(self, name: str, port: int, flag: str) -> None:
        if port_in_use(port):
            raise StackError(
                f"port {port} on {LOCALHOST} ({name}) is already in use by another process. "
                f"Choose another with {flag} N, or stop what listens there."
            )

    def _ensure_kafka(self, node: KafkaNode, report: Progress) -> None:
        pid = node.pid()
        if pid is None:
            self._check_free("Kafka", node.kafka_port, "--kafka-port")
            node.start(report)
        elif not node.answers(timeout=5.0):
            report(f"Kafka (pid {pid}) is starting; waiting for it to answer")
            node.wait_ready(pid)

    def _ensure_flower(self, node: FlowerNode, report: Progress) -> None:
        pid = node.pid()
        if pid is None:
            self._check_free("Flower", node.port, "--flower-port")
            node.start(report)
        elif not node.answers(timeout=2.0):
            node.wait_ready(pid)

    def _ensure_rabbitmq(self, node: RabbitNode, report: Progress) -> None:
        pid = node.pid()
        if pid is None:
            self._check_free("RabbitMQ", node.port, "--rabbitmq-port")
            node.start(report)
        elif not node.answers(timeout=2.0):
            report("RabbitMQ is starting; waiting for it to take connections")
            node.wait_ready(pid)

    def _ensure_redis(self, node: RedisNode, report: Progress) -> None:
        pid = node.pid()
        if pid is None:
            self._check_free("Redis", node.port, "--redis-port")
            node.start(report)
        elif not node.answers(timeout=2.0):
            node.wait_ready(pid)


def _status_of(node: FlowerNode | RabbitNode | None) -> dict[str, Any]:
    """Whether an optional node (Flower, RabbitMQ) runs and answers, its URL and pid."""
    pid = None if node is None else node.pid()
    running = node is not None and pid is not None and port_accepts(node.port)
    return {"running": running, "url": None if node is None else node.url, "pid": pid}
