"""The bridge's own Redis clients (result watcher, dispatch ledger), connected to the result
backend exactly as Celery connects to it.

Celery's Redis result backend reads ``result_backend`` and its settings into connection
parameters: TLS from a ``rediss://`` URL's ``ssl_cert_reqs`` (``CERT_REQUIRED``,
``required``, …), ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` parameters, or from
the ``redis_backend_use_ssl`` setting (``celery.options``) with a ``redis://`` URL; a
``rediss://`` URL without ``ssl_cert_reqs``, or TLS parameters on a ``redis://`` URL, it
refuses. The bridge takes those parameters from Celery's own backend object rather than
parsing the URL a second way (redis-py's ``from_url`` knows neither ``CERT_REQUIRED`` nor
``redis_backend_use_ssl``), so what the workers honour reaches the watcher, and what Celery
refuses is a configuration error at start, in Celery's words.

The bridge's own socket timeouts always apply: the dispatch ledger is asked on the consumer
loop's thread, where no call may block for long.

The bridge talks to the broker only through its Celery app (kombu), which honours
``broker_use_ssl`` and a ``rediss://`` broker URL itself.

A ``sentinel://`` result backend (:mod:`bridge.sentinel`) gives clients of the current master
instead: :func:`result_backend_clients` hides which kind the bridge got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from bridge.sentinel import master_clients, unknown_masters, uses_sentinel
from bridge.settings import CelerySettings, ConfigError

#: seconds; see the module docstring
SOCKET_TIMEOUT = 10.0
SOCKET_CONNECT_TIMEOUT = 5.0
#: Celery's identification of its own connections (``CLIENT SETINFO``): not the bridge's
_CELERY_ONLY = ("driver_info", "lib_name", "lib_version")


def _timeouts() -> dict[str, float]:
    return {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT}


def _celery_params(app: Any) -> dict[str, Any]:
    """The connection parameters Celery's backend object made of ``result_backend``."""
    try:
        backend = app.backend
    except ValueError as exc:  # Celery's checks of the TLS parameters
        message = " ".join(str(exc).split())
        raise ConfigError(f"celery.result_backend: {message}") from None
    params = dict(backend.connparams)
    for name in _CELERY_ONLY:
        params.pop(name, None)
    return params


def result_backend_params(app: Any) -> dict[str, Any]:
    """``redis.ConnectionPool`` keyword arguments for the result backend of Celery ``app``.

    Raises :class:`ConfigError` (naming ``celery.result_backend``, never its password) for
    TLS settings Celery refuses.
    """
    url = str(app.conf.result_backend)
    if url.startswith("unix://"):  # no Celery backend reads this: redis-py's own rules
        params: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    else:
        params = _celery_params(app)
    params.update(_timeouts())
    return params


def result_backend_clients(app: Any) -> Callable[[], redis.Redis]:
    """A factory of clients of the result backend of Celery ``app``: each call a new client
    (its own pool); on ``sentinel://``, a client of the master the sentinels name now.
    Raises :class:`ConfigError` for settings Celery refuses."""
    if uses_sentinel(str(app.conf.result_backend)):
        options = app.conf.result_backend_transport_options or {}
        return master_clients(_celery_params(app), options, _timeouts())
    params = result_backend_params(app)
    return lambda: redis.Redis(connection_pool=redis.ConnectionPool(**params))


def result_backend_client(app: Any) -> redis.Redis:
    """A client of the result backend of Celery ``app``, with the TLS settings Celery uses."""
    return result_backend_clients(app)()


def check_sentinel_masters(celery: CelerySettings) -> None:
    """Raise :class:`ConfigError` when the sentinels of a ``sentinel://`` broker or result
    backend answer but none monitors its ``master_name`` (a typo would otherwise look like an
    endless outage); sentinels that do not answer are left to the run's retries."""
    urls = {"broker_url": celery.broker_url, "result_backend": celery.result_backend}
    problems = unknown_masters(urls, celery.options)
    if problems:
        raise ConfigError("; ".join(problems))
