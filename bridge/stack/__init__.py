"""A local Kafka (KRaft, from Maven jars) + Redis stack without Docker, for `ckb stack` and tests;
RabbitMQ as the Celery broker on request (``rabbitmq_port``).

>>> stack = LocalStack(state_dir, kafka_port=9092, redis_port=6379, flower_port=5555)
>>> info = stack.up(progress=print)      # idempotent; flower_port=None: no Flower
>>> info.kafka_bootstrap, info.redis_url, info.flower_url
('127.0.0.1:9092', 'redis://127.0.0.1:6379', 'http://127.0.0.1:5555')
>>> stack.down()
"""

from bridge.stack.flower import DEFAULT_FLOWER_PORT, flower_port_for
from bridge.stack.kafka import ensure_kafka_jars, find_java
from bridge.stack.manager import LocalStack, StackInfo
from bridge.stack.paths import DEFAULT_KAFKA_VERSION, default_state_dir
from bridge.stack.processes import StackError
from bridge.stack.rabbitmq import DEFAULT_RABBITMQ_PORT, find_rabbitmq_server
from bridge.stack.redis_server import find_redis_server

__all__ = [
    "DEFAULT_FLOWER_PORT",
    "DEFAULT_KAFKA_VERSION",
    "DEFAULT_RABBITMQ_PORT",
    "LocalStack",
    "StackError",
    "StackInfo",
    "default_state_dir",
    "ensure_kafka_jars",
    "find_java",
    "find_rabbitmq_server",
    "find_redis_server",
    "flower_port_for",
]
