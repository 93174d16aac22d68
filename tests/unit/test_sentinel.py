"""``sentinel://`` settings read as Celery and kombu read them: the master's name is required
(a clear error naming the setting), and the bridge's clients ask the listed sentinels for that
master, with the URL's database and password and the sentinels' own ``sentinel_kwargs``.

No server: redis-py builds a Sentinel client's pool without connecting.
tests/integration/test_sentinel.py runs the bridge on real sentinels.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

from bridge.celery_app import make_celery_app
from bridge.redis_clients import SOCKET_TIMEOUT, result_backend_client
from bridge.secrets import mask_text
from bridge.sentinel import sentinel_addresses, sentinel_problems, unknown_masters, uses_sentinel
from bridge.settings import CelerySettings
from bridge.stack import StackInfo
from bridge.stack.paths import StatePaths
from bridge.stack.redis_server import RedisNode
from bridge.stack.sentinel import MASTER_NAME, SentinelClients, stack_sentinels

URL = "sentinel://:pw@10.0.0.1:26379/3;sentinel://10.0.0.2:26380/3"
OPTIONS = {"result_backend_transport_options": {"master_name": "primary"}}


def test_the_scheme_is_recognised_whatever_its_case() -> None:
    assert uses_sentinel(URL) and uses_sentinel("SENTINEL://h:1/0")
    assert not uses_sentinel("redis://h:6379/0")


@pytest.mark.parametrize("setting", ["broker_url", "result_backend"])
def test_a_sentinel_url_without_master_name_is_a_config_error_naming_the_setting(
    setting: str,
) -> None:
    with pytest.raises(ValueError) as caught:
        CelerySettings(**{setting: URL})  # type: ignore[arg-type]
    key = "broker" if setting == "broker_url" else "result_backend"
    message = str(caught.value)
    assert f"celery.options.{key}_transport_options.master_name" in message
    assert "pw" not in mask_text(message).replace("password", "")


def test_master_name_of_the_other_setting_does_not_count() -> None:
    broker_only = {"broker_transport_options": {"master_name": "primary"}}
    problems = sentinel_problems({"result_backend": URL}, broker_only)
    assert len(problems) == 1 and "result_backend_transport_options" in problems[0]
    assert sentinel_problems({"result_backend": URL}, OPTIONS) == []
    assert sentinel_problems({"result_backend": "redis://h/1"}, {}) == []


def test_sentinel_kwargs_must_be_a_mapping() -> None:
    bad = {"result_backend_transport_options": {"master_name": "m", "sentinel_kwargs": "pw"}}
    (problem,) = sentinel_problems({"result_backend": URL}, bad)
    assert "sentinel_kwargs" in problem


def pool_of(options: dict[str, Any]) -> Any:
    settings = CelerySettings(result_backend=URL, options=options)
    client = result_backend_client(make_celery_app(settings))
    return client.connection_pool


def test_the_client_asks_every_listed_sentinel_for_the_named_master() -> None:
    pool = pool_of(OPTIONS)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "primary"
    manager = pool.sentinel_manager
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]
    assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    # the master's database and password come from the URL, as Celery reads them
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT
    # the sentinels get the bridge's timeouts (Celery gives them none) and no master password
    sentinel_kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["socket_timeout"] == SOCKET_TIMEOUT
    assert sentinel_kwargs.get("password") is None


def test_sentinel_kwargs_and_min_other_sentinels_are_honoured() -> None:
    options = {
        "result_backend_transport_options": {
            "master_name": "primary",
            "sentinel_kwargs": {"password": "sentinel-pw", "socket_timeout": 1.5},
            "min_other_sentinels": 1,
        }
    }
    manager = pool_of(options).sentinel_manager
    sentinel_kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] == "sentinel-pw"
    assert sentinel_kwargs["socket_timeout"] == 1.5
    assert manager.min_other_sentinels == 1


def test_redis_backend_use_ssl_reaches_the_master_connections() -> None:
    options = {**OPTIONS, "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}
    connection = pool_of(options).make_connection()
    # Celery's own SentinelManagedSSLConnection: a sentinel-managed TLS connection
    assert isinstance(connection, SentinelManagedConnection)
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED


def test_the_example_worker_takes_the_bridges_options_from_the_same_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery import Celery

    from tasks.celeryconfig import configure

    options = {
        "broker_transport_options": {"master_name": "primary"},
        "result_backend_transport_options": {"master_name": "primary"},
    }
    monkeypatch.setenv("CKB_CELERY__BROKER_URL", URL)
    monkeypatch.setenv("CKB_CELERY__OPTIONS", json.dumps(options))
    monkeypatch.setenv("CKB_WORKER_VISIBILITY_TIMEOUT", "120")
    app = Celery("worker")
    configure(app)
    assert app.conf.broker_url == URL
    # added to the worker's own transport options, not in their place
    assert app.conf.broker_transport_options == {
        "visibility_timeout": 120,
        "master_name": "primary",
    }
    assert app.conf.result_backend_transport_options == {"master_name": "primary"}


def test_the_stacks_sentinel_set_is_recorded_once_and_found_again(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    master = RedisNode(paths, 16379)
    assert stack_sentinels(paths, master) is None, "none recorded, none asked for"
    made = stack_sentinels(paths, master, create=True)
    assert made is not None and made.master is master
    ports = {made.replica_port, *made.sentinel_ports, master.port}
    assert len(ports) == 5, "every member on a port of its own"
    again = stack_sentinels(paths, master, create=True)
    assert again == made, "up again: the same ports, not new ones"
    clients = made.clients
    assert clients.url(1).count("sentinel://") == 3 and clients.url(1).endswith("/1")
    assert clients.options["result_backend_transport_options"] == {"master_name": MASTER_NAME}


def test_the_stack_info_gives_sentinel_urls_and_only_the_options_they_need() -> None:
    clients = SentinelClients((26379, 26380, 26381))
    base = StackInfo("127.0.0.1:9092", "redis://127.0.0.1:6379", Path("/s"), sentinel=clients)
    assert base.broker_url == clients.url(0) and base.result_backend == clients.url(1)
    assert set(base.celery_options) == {
        "broker_transport_options",
        "result_backend_transport_options",
    }
    on_postgres = dataclasses.replace(base, postgres_url="postgresql://u@127.0.0.1:5432/ckb")
    assert on_postgres.result_backend.startswith("db+postgresql://")
    assert set(on_postgres.celery_options) == {"broker_transport_options"}
    plain = dataclasses.replace(base, sentinel=None)
    assert plain.broker_url == "redis://127.0.0.1:6379/0" and plain.celery_options == {}


def test_sentinel_addresses_as_kombu_reads_them() -> None:
    assert sentinel_addresses("sentinel://:pw@10.0.0.1:26380/1;sentinel://h2/1") == [
        ("10.0.0.1", 26380),
        ("h2", 26379),
    ]


def test_sentinels_that_do_not_answer_prove_no_master_name_wrong() -> None:
    with socket.socket() as sock:  # a port nothing listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sentinel://127.0.0.1:{port}/1"
    options = {"result_backend_transport_options": {"master_name": "typo"}}
    assert unknown_masters({"result_backend": url}, options, timeout=0.5) == []
