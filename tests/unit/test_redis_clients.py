"""The bridge's own Redis clients connect to the result backend as Celery does: TLS from a
``rediss://`` URL's parameters or from ``redis_backend_use_ssl``, refused where Celery refuses.

No server is needed: redis-py builds (and checks) a connection's TLS settings when the pool
makes the connection object, before it connects. tests/integration/test_redis_tls.py
connects the result watcher to a real TLS Redis.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis

from bridge.celery_app import make_celery_app
from bridge.redis_clients import result_backend_client, result_backend_params
from bridge.settings import CelerySettings, ConfigError

TLS_URL = (
    "rediss://:s3cret@redis.example:6380/3?ssl_cert_reqs=CERT_REQUIRED"
    "&ssl_ca_certs=/etc/ca%20dir/ca.pem&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem"
)


def connection_of(celery: CelerySettings) -> Any:
    """The connection object the bridge's client would open (not connected)."""
    client = result_backend_client(make_celery_app(celery))
    try:
        return client.connection_pool.make_connection()
    finally:
        client.close()


def test_a_rediss_url_with_celery_style_parameters_is_honoured() -> None:
    connection = connection_of(CelerySettings(result_backend=TLS_URL))
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == "/etc/ca dir/ca.pem"
    assert connection.certfile == "/etc/c.pem"
    assert connection.keyfile == "/etc/k.pem"
    assert (connection.host, connection.port, connection.db) == ("redis.example", 6380, 3)
    assert connection.password == "s3cret"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("CERT_REQUIRED", ssl.CERT_REQUIRED),
        ("required", ssl.CERT_REQUIRED),
        ("CERT_OPTIONAL", ssl.CERT_OPTIONAL),
        ("optional", ssl.CERT_OPTIONAL),
        ("CERT_NONE", ssl.CERT_NONE),
        ("none", ssl.CERT_NONE),
    ],
)
def test_every_spelling_celery_accepts_for_ssl_cert_reqs(given: str, expected: int) -> None:
    url = f"rediss://redis.example:6380/1?ssl_cert_reqs={given}"
    connection = connection_of(CelerySettings(result_backend=url))
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == expected


def test_redis_backend_use_ssl_turns_tls_on_for_a_redis_url() -> None:
    options = {
        "redis_backend_use_ssl": {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": "/etc/ca.pem",
            "ssl_certfile": "/etc/c.pem",
            "ssl_keyfile": "/etc/k.pem",
        }
    }
    celery = CelerySettings(result_backend="redis://redis.example:6380/2", options=options)
    connection = connection_of(celery)
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == "/etc/ca.pem"
    assert (connection.certfile, connection.keyfile) == ("/etc/c.pem", "/etc/k.pem")


def test_url_parameters_win_over_redis_backend_use_ssl_as_in_celery() -> None:
    options = {"redis_backend_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": "/a.pem"}}
    url = "rediss://redis.example:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/b.pem"
    connection = connection_of(CelerySettings(result_backend=url, options=options))
    assert connection.cert_reqs == ssl.CERT_NONE
    assert connection.ca_certs == "/b.pem"


def test_a_plain_url_stays_plain() -> None:
    connection = connection_of(CelerySettings(result_backend="redis://:pw@127.0.0.1:6379/1"))
    assert type(connection) is redis.Connection
    assert (connection.host, connection.port, connection.db) == ("127.0.0.1", 6379, 1)
    assert connection.password == "pw"


def test_the_bridge_keeps_its_own_short_socket_timeouts() -> None:
    """The dispatch ledger is asked on the loop's thread: no call may block for long."""
    options = {"redis_socket_timeout": 120, "redis_socket_connect_timeout": 60}
    params = result_backend_params(
        make_celery_app(CelerySettings(result_backend=TLS_URL, options=options))
    )
    assert params["socket_timeout"] == 10
    assert params["socket_connect_timeout"] == 5


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("rediss://:s3cret@redis.example:6380/0", "must have parameter ssl_cert_reqs"),
        ("rediss://:s3cret@redis.example:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://:s3cret@redis.example:6379/0?ssl_cert_reqs=required", "rediss://"),
    ],
)
def test_tls_settings_celery_refuses_are_a_config_error(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        result_backend_client(make_celery_app(CelerySettings(result_backend=url)))
    message = str(caught.value)
    assert message.startswith("celery.result_backend: ")
    assert words in message
    assert "s3cret" not in message


def test_a_unix_socket_url_still_works() -> None:
    """Celery has no ``unix://`` backend; the bridge reads it as redis-py does."""
    connection = connection_of(CelerySettings(result_backend="unix:///run/redis.sock?db=4"))
    assert isinstance(connection, redis.UnixDomainSocketConnection)
    assert (connection.path, connection.db) == ("/run/redis.sock", 4)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("rediss://redis.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem", {}),
        (
            "redis://redis.example:6379/0",
            {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}},
        ),
    ],
)
def test_the_broker_is_reached_through_celery_which_reads_its_tls_itself(
    url: str, options: dict[str, Any]
) -> None:
    """A guard, not a fix: the dispatcher and the worker probe use the bridge's Celery app,
    whose kombu connection carries the broker's TLS settings."""
    app = make_celery_app(CelerySettings(broker_url=url, options=options))
    connection = app.connection_for_write()
    assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    connection.release()


def test_the_bridge_builds_its_redis_clients_this_way() -> None:
    """``build_bridge`` goes through :func:`result_backend_params`: a TLS setting Celery
    refuses stops it before anything starts (redis-py's ``from_url`` took it silently)."""
    from bridge.service import build_bridge
    from bridge.settings import Route, Settings

    settings = Settings(
        celery=CelerySettings(result_backend="rediss://:s3cret@redis.example:6380/1"),
        routes=[Route(topic="orders", task="t")],
    )
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        build_bridge(settings)
