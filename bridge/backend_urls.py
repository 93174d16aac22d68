"""What kind of server a Celery broker or result backend URL names (no I/O, no imports of
drivers): the settings check combinations with it, the result source factory picks by it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

#: URL schemes of a Redis server (result backend or broker); ``sentinel``: the master a Redis
#: Sentinel names (:mod:`bridge.sentinel`)
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: the schemes of a Redis the bridge connects to directly from a broker URL
PLAIN_REDIS = ("redis", "rediss", "unix")
#: Celery's SQLAlchemy result backend: ``db+<dialect>[+driver]://``; the bridge reads it with
#: the same SQLAlchemy dialects (the driver is an extra: ``ckb[postgres]``)
DATABASE_DIALECTS = ("postgresql", "mysql", "sqlite")
#: a RabbitMQ broker (kombu's py-amqp transports): the only broker ``rpc://`` replies through
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")

#: other result backends Celery ships (its ``BACKEND_ALIASES``): read through Celery's own API,
#: the slow path (:mod:`bridge.generic_results`); ``disabled`` stores nothing to read
GENERIC_SCHEMES = (
    "arangodb", "azureblockblob", "cache", "cassandra", "consul", "cosmosdbsql", "couchbase",
    "couchdb", "database", "db", "dynamodb", "elasticsearch", "file", "gs", "mongodb", "riak",
    "s3",
)  # fmt: skip

BackendKind = Literal["redis", "database", "rpc", "generic"]


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def backend_kind(url: str) -> BackendKind | None:
    """The kind of result backend ``url`` names, or None when the bridge cannot watch it."""
    name = scheme(url)
    if name in REDIS_SCHEMES:
        return "redis"
    if name.startswith("db+") and name[3:].split("+", 1)[0] in DATABASE_DIALECTS:
        return "database"
    if name == "rpc":  # replies on the broker, to the queue each task message names
        return "rpc"
    if name.split("+", 1)[0] in GENERIC_SCHEMES:
        return "generic"
    return None


def is_redis(url: str) -> bool:
    return scheme(url) in REDIS_SCHEMES


def rpc_without_amqp(broker_url: str, result_backend: str) -> str | None:
    """Why ``rpc://`` cannot work with this broker (it replies through RabbitMQ only)."""
    if scheme(result_backend) != "rpc" or scheme(broker_url) in AMQP_SCHEMES:
        return None
    return (
        "celery.result_backend rpc:// sends results back through a RabbitMQ broker, and "
        "celery.broker_url is not amqp://: use an amqp:// broker (workers too), or a Redis or "
        "database result backend"
    )


def rate_limit_without_redis(
    broker_url: str, result_backend: str, rate_limited: Sequence[int]
) -> str | None:
    """Why the rate-limited routes (their indexes) cannot work: the shared token buckets live
    in a Redis (the result backend's, else a ``redis://`` broker's); None when there is one."""
    if not rate_limited or is_redis(result_backend) or scheme(broker_url) in PLAIN_REDIS:
        return None
    return (
        f"routes.{rate_limited[0]}.rate_limit needs a Redis for the group's token buckets, and "
        "celery.result_backend is not Redis nor celery.broker_url a redis:// URL: remove "
        "rate_limit, or use a Redis result backend or broker"
    )
