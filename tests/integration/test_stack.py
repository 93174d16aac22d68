"""The real local stack: one Kafka (KRaft) + Redis start, used, bounced and stopped."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import kombu
import pytest
import redis
from confluent_kafka import Consumer, Producer

from bench.common import free_port
from bridge.stack import LocalStack, StackError, StackInfo

pytestmark = pytest.mark.integration


def _ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return bool(client.ping())


def _produce_and_consume(bootstrap: str) -> None:
    topic = f"stack-it-{uuid.uuid4().hex[:10]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "group.protocol": "consumer",  # KIP-848 must be on in the broker
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        got = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got = msg
                break
        assert got is not None, "no record consumed within 60s"
        assert (got.key(), got.value()) == (b"k", b"hello")
    finally:
        consumer.close()


def _flower_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _assert_running(stack: LocalStack, info: StackInfo) -> tuple[int, int, int]:
    status = stack.status()
    assert status["kafka"]["running"] and status["redis"]["running"], status
    assert status["flower"]["running"], status
    assert status["kafka"]["bootstrap"] == info.kafka_bootstrap
    assert status["redis"]["url"] == info.redis_url
    assert status["flower"]["url"] == info.flower_url
    return status["kafka"]["pid"], status["redis"]["pid"], status["flower"]["pid"]


def test_stack_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kafka_port, redis_port, flower_port = free_port(), free_port(), free_port()
    stack = LocalStack(state, kafka_port=kafka_port, redis_port=redis_port, flower_port=flower_port)
    progress: list[str] = []
    try:
        info = stack.up(progress=progress.append)
        assert info == StackInfo(
            f"127.0.0.1:{kafka_port}",
            f"redis://127.0.0.1:{redis_port}",
            state,
            flower_url=f"http://127.0.0.1:{flower_port}",
        )
        assert any("Kafka ready" in m for m in progress), progress
        assert any("Flower ready" in m for m in progress), progress
        pids = _assert_running(stack, info)
        assert _flower_answers(f"http://127.0.0.1:{flower_port}")
        assert (state / "logs" / "flower.log").is_file()

        _produce_and_consume(info.kafka_bootstrap)
        assert _ping(info.redis_url)

        # idempotent: same processes, same addresses; an `up` without Flower leaves it running
        assert stack.up() == info
        assert _assert_running(stack, info) == pids
        assert LocalStack(state, kafka_port=kafka_port, redis_port=redis_port).up() == info
        # ports and pids are remembered: a stack object without port flags finds them
        assert LocalStack(state).status()["kafka"]["pid"] == pids[0]
        assert LocalStack(state).status()["flower"]["pid"] == pids[2]

        with pytest.raises(StackError, match="already runs Kafka"):
            LocalStack(state, kafka_port=free_port(), redis_port=redis_port).up()
        with pytest.raises(StackError, match=rf"already runs Flower on 127.0.0.1:{flower_port}"):
            LocalStack(state, kafka_port, redis_port, flower_port=free_port()).up()
        with pytest.raises(StackError, match=rf"port {kafka_port} .*--kafka-port"):
            LocalStack(tmp_path / "other", kafka_port=kafka_port, redis_port=free_port()).up()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            other = LocalStack(tmp_path / "other", free_port(), free_port(), flower_port=taken)
            with pytest.raises(StackError, match=rf"port {taken} .*Flower.*--flower-port"):
                other.up()

        stack.stop_redis()
        assert not stack.status()["redis"]["running"]
        assert stack.status()["kafka"]["running"]
        stack.start_redis()
        assert _ping(info.redis_url)
        assert stack.status()["redis"]["pid"] != pids[1]
    finally:
        stack.down()
    status = stack.status()
    assert not status["kafka"]["running"] and status["kafka"]["pid"] is None
    assert not status["redis"]["running"] and status["redis"]["pid"] is None
    assert not status["flower"]["running"] and status["flower"]["pid"] is None
    assert not _flower_answers(f"http://127.0.0.1:{flower_port}")
    stack.down()  # idempotent


def _amqp_round_trip(url: str) -> None:
    """Publish with publisher confirms and read the message back."""
    queue_name = f"stack-it-{uuid.uuid4().hex[:10]}"
    with kombu.Connection(url, transport_options={"confirm_publish": True}) as connection:
        queue = kombu.Queue(queue_name, auto_delete=True)
        with connection.Producer() as producer:
            producer.publish({"hello": 1}, routing_key=queue_name, declare=[queue])
        message = queue(connection.default_channel).get(no_ack=True)
        assert message is not None and message.payload == {"hello": 1}


def test_stack_with_rabbitmq_broker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kafka_port, redis_port, rabbit_port = free_port(), free_port(), free_port()
    stack = LocalStack(state, kafka_port, redis_port, rabbitmq_port=rabbit_port)
    url = f"amqp://guest:guest@127.0.0.1:{rabbit_port}//"
    progress: list[str] = []
    try:
        info = stack.up(progress=progress.append)
        assert info.rabbitmq_url == url and info.broker_url == url
        assert any("RabbitMQ ready" in m for m in progress), progress
        status = stack.status()
        assert status["rabbitmq"]["running"] and status["rabbitmq"]["url"] == url, status
        pid = status["rabbitmq"]["pid"]
        _amqp_round_trip(url)
        # node name, cookie, mnesia, logs and pid file are the state dir's
        assert (state / "rabbitmq.pid").read_text().strip() == str(pid)
        assert (state / "rabbitmq" / ".erlang.cookie").is_file()
        assert (state / "rabbitmq" / "mnesia" / f"ckb-{rabbit_port}@localhost").is_dir()
        assert (state / "logs" / "rabbitmq" / f"ckb-{rabbit_port}@localhost.log").is_file()

        # idempotent, with or without the flag; the flag with another port is refused
        assert stack.up() == info
        assert LocalStack(state, kafka_port, redis_port).up() == info
        assert LocalStack(state).status()["rabbitmq"]["pid"] == pid
        with pytest.raises(StackError, match=rf"already runs RabbitMQ on 127.0.0.1:{rabbit_port}"):
            LocalStack(state, kafka_port, redis_port, rabbitmq_port=free_port()).up()

        stack.stop_rabbitmq()
        assert not stack.status()["rabbitmq"]["running"]
        assert stack.status()["redis"]["running"]
        stack.start_rabbitmq()
        assert stack.status()["rabbitmq"]["pid"] != pid
        _amqp_round_trip(url)  # mnesia kept: the node restarts on its own data
    finally:
        stack.down()
    status = stack.status()["rabbitmq"]
    assert not status["running"] and status["pid"] is None
    ports = json.loads((state / "stack.json").read_text())
    epmd = socket.socket()
    with epmd:  # the node's own epmd went with it
        assert epmd.connect_ex(("127.0.0.1", ports["epmd"])) != 0
    stack.down()  # idempotent


def test_stack_with_sentinel_broker(tmp_path: Path) -> None:
    """``--broker sentinel``: the stack's Redis as master, a replica and three sentinels; the
    URLs and options it gives reach that master through kombu as Celery's workers would."""
    state = tmp_path / "state"
    kafka_port, redis_port = free_port(), free_port()
    stack = LocalStack(state, kafka_port, redis_port, sentinel=True)
    try:
        info = stack.up(progress=lambda line: None)
        assert info.sentinel is not None and info.broker_url.startswith("sentinel://")
        assert info.result_backend == info.sentinel.url(1)
        status = stack.status()["sentinel"]
        assert status["running"] and status["master"] == f"127.0.0.1:{redis_port}", status
        master_name = info.celery_options["broker_transport_options"]["master_name"]
        with kombu.Connection(info.broker_url, transport_options={"master_name": master_name}) as c:
            queue = kombu.Queue(f"stack-it-{uuid.uuid4().hex[:10]}")
            with c.Producer() as producer:
                producer.publish({"hello": 1}, routing_key=queue.name, declare=[queue])
            message = queue(c.default_channel).get(no_ack=True)
            assert message is not None and message.payload == {"hello": 1}
        # idempotent with or without the flag: the running set is kept, on the same ports
        assert stack.up() == info
        assert LocalStack(state, kafka_port, redis_port).up() == info
        recorded = json.loads((state / "sentinel.json").read_text())
    finally:
        stack.down()
    assert not stack.status()["sentinel"]["running"]
    for port in [recorded["replica"], *recorded["sentinels"]]:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
