"""The result watcher and the dispatch ledger on a real TLS-only Redis, configured the way
Celery is: a ``rediss://`` URL with ``ssl_cert_reqs=CERT_REQUIRED`` and certificate paths, or
a ``redis://`` URL with ``redis_backend_use_ssl``. The server asks for a client certificate,
so every one of ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` has to arrive.

Needs a ``redis-server`` built with TLS (Debian's is) and ``openssl`` (certificates from
``bridge.stack.certificates``); skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.celery_app import make_celery_app
from bridge.dispatch_ledger import DispatchLedger
from bridge.redis_clients import result_backend_client, result_backend_params
from bridge.results import ResultWatcher, json_decoder
from bridge.settings import CelerySettings
from bridge.stack.certificates import ensure_certificates
from tests.integration.harness import free_port

PREFIX = "celery-task-meta-"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    cert: Path
    key: Path

    def url(self, db: int = 1) -> str:
        return (
            f"rediss://127.0.0.1:{self.port}/{db}?ssl_cert_reqs=CERT_REQUIRED"
            f"&ssl_ca_certs={self.ca}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"
        )

    def direct(self, db: int = 1) -> redis.Redis:
        """A client of the test's own, not the bridge's."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            ssl_certfile=str(self.cert),
            ssl_keyfile=str(self.key),
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    where = tmp_path_factory.mktemp("tls-redis")
    certs = ensure_certificates(where)
    port = free_port()
    command = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
               "--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
               "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
               "--save", "", "--appendonly", "no", "--dir", str(where)]  # fmt: skip
    log = where / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=where, stdout=out, stderr=subprocess.STDOUT)
    server = TlsRedis(port, certs.ca, certs.client.cert, certs.client.key)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.skip(f"redis-server without TLS support? {log.read_text()[-300:]}")
            try:
                if server.direct().ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def store_result(client: redis.Redis, task_id: str, status: str) -> None:
    """What a Celery worker writes: the result key, then the same value published."""
    value = json.dumps({"status": status, "result": None, "traceback": None, "task_id": task_id})
    client.set(PREFIX + task_id, value)
    client.publish(PREFIX + task_id, value)


def watcher_sees(celery: CelerySettings, server: TlsRedis, db: int) -> None:
    app = make_celery_app(celery)
    params = result_backend_params(app)
    watcher = ResultWatcher(lambda: redis.Redis(connection_pool=redis.ConnectionPool(**params)))
    writer = server.direct(db)
    watcher.start(wait=10)
    try:
        assert watcher.healthy, "the watcher did not subscribe over TLS"
        watcher.watch(["published", "stored"])
        store_result(writer, "published", "SUCCESS")
        event: Any = watcher.completions.get(timeout=10)
        assert (event.task_id, event.state) == ("published", "SUCCESS")
        writer.set(PREFIX + "stored", json.dumps({"status": "FAILURE", "result": None}))
        ledger_client = result_backend_client(app)
        try:
            ledger = DispatchLedger(ledger_client, PREFIX, json_decoder)
            ledger.mark(["sent-1"], ttl=60)
            known = ledger.lookup(["stored", "sent-1", "unknown"])
            assert set(known.finals) == {"stored"}
            assert known.in_progress == {"sent-1"}
        finally:
            ledger_client.close()
    finally:
        watcher.stop()
        writer.close()


def test_watcher_and_ledger_over_a_rediss_url_with_celery_parameters(tls_redis: TlsRedis) -> None:
    watcher_sees(CelerySettings(result_backend=tls_redis.url(db=1)), tls_redis, db=1)


def test_watcher_and_ledger_over_redis_backend_use_ssl(tls_redis: TlsRedis) -> None:
    options = {
        "redis_backend_use_ssl": {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": str(tls_redis.ca),
            "ssl_certfile": str(tls_redis.cert),
            "ssl_keyfile": str(tls_redis.key),
        }
    }
    url = f"redis://127.0.0.1:{tls_redis.port}/2"
    watcher_sees(CelerySettings(result_backend=url, options=options), tls_redis, db=2)


def test_a_certificate_the_ca_did_not_sign_is_refused(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """ssl_cert_reqs=CERT_REQUIRED is in force: another CA's certificate does not pass."""
    other = ensure_certificates(tmp_path)
    url = tls_redis.url().replace(str(tls_redis.ca), str(other.ca))
    client = result_backend_client(make_celery_app(CelerySettings(result_backend=url)))
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
