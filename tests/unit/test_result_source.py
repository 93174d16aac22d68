"""The result source is chosen from ``celery.result_backend``'s scheme (no server needed: the
clients connect lazily)."""

from __future__ import annotations

import pytest

from bridge.backend_urls import backend_kind, rate_limit_without_redis
from bridge.celery_app import make_celery_app
from bridge.dispatch_ledger import DispatchLedger
from bridge.result_source import open_results
from bridge.results import ResultWatcher
from bridge.settings import CelerySettings, Route, Settings


def settings_for(backend: str, broker: str = "redis://127.0.0.1:6379/0") -> Settings:
    celery = CelerySettings(broker_url=broker, result_backend=backend)
    return Settings(celery=celery, routes=[Route(topic="t", task="x")])


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://h:6379/1", "redis"),
        ("rediss://h:6380/1?ssl_cert_reqs=required", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("db+postgresql://u:p@h/db", "database"),
        ("db+postgresql+psycopg://u:p@h/db", "database"),
        ("DB+MySQL://u:p@h/db", "database"),
        ("db+sqlite:///results.db", "database"),
        ("db+oracle://u:p@h/db", "generic"),  # Celery's database backend, read through its API
        ("rpc://", "rpc"),
        ("cache+memcached://h:11211/", "generic"),
        ("mongodb://h:27017/results", "generic"),
        ("file:///var/results", "generic"),
        ("disabled://", None),
        ("memcached://h", None),
        ("", None),
    ],
)
def test_backend_kind_from_the_scheme(url: str, kind: str | None) -> None:
    assert backend_kind(url) == kind


def test_a_redis_backend_gets_the_pubsub_watcher_and_the_redis_ledger() -> None:
    settings = settings_for("redis://127.0.0.1:6399/1")
    parts = open_results(settings, make_celery_app(settings.celery))
    try:
        assert isinstance(parts.source, ResultWatcher)
        assert isinstance(parts.ledger, DispatchLedger)
        assert parts.redis is not None
    finally:
        for close in parts.closers:
            close()


def test_rate_limits_need_a_redis_somewhere() -> None:
    amqp, db = "amqp://guest@h//", "db+postgresql://u@h/db"
    assert rate_limit_without_redis(amqp, "redis://h/1", [0]) is None
    assert rate_limit_without_redis("redis://h/0", db, [0]) is None
    assert rate_limit_without_redis(amqp, db, []) is None
    problem = rate_limit_without_redis(amqp, db, [2, 3])
    assert problem is not None and problem.startswith("routes.2.rate_limit needs a Redis")
