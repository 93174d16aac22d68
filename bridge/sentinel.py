"""Redis Sentinel (``sentinel://``) for the Celery broker and the result backend, read the way
kombu and Celery read it, so one configuration serves the workers and the bridge.

A Sentinel URL lists the sentinels, ``;``-separated, and the master's database and password
ride on the first one: ``sentinel://:pw@10.0.0.1:26379/1;sentinel://10.0.0.2:26379/1``.
Which master the sentinels are asked for, and how to talk to the sentinels themselves, are
Celery settings (``celery.options`` here, the same keys in the workers' Celery config):

- ``broker_transport_options`` (broker) and ``result_backend_transport_options`` (results):
  ``master_name`` (required: the name in the sentinels' ``sentinel monitor <name> ...``),
  ``sentinel_kwargs`` (connection arguments for the sentinels, e.g. ``password``, ``ssl``:
  sentinels may have a password of their own), ``min_other_sentinels``;
- TLS to the master: ``broker_use_ssl`` / ``redis_backend_use_ssl``.

The bridge's result clients (watcher, dispatch ledger, rate limiter) are redis-py
``Sentinel.master_for`` clients: every new connection asks the sentinels for the current
master, and a connection to a master that was demoted (``READONLY``) or went away fails, so the
next command, or the watcher's next listen, reaches the new master.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis
from kombu.utils.url import url_to_parts
from redis.sentinel import Sentinel

SCHEME = "sentinel"
#: kombu's and Celery's port of a sentinel whose URL names none
DEFAULT_PORT = 26379
#: where Celery and kombu read a Sentinel URL's options, by the setting holding the URL
OPTIONS_OF = {
    "broker_url": "broker_transport_options",
    "result_backend": "result_backend_transport_options",
}


def uses_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis Sentinel (kombu's and Celery's ``sentinel://``)."""
    return url.partition("://")[0].lower() == SCHEME


def sentinel_problems(urls: Mapping[str, str], options: Mapping[str, Any]) -> list[str]:
    """What is missing for the ``sentinel://`` URLs among ``urls`` (setting name to URL), given
    the Celery ``options``; one message per problem, naming the setting and the fix."""
    problems = []
    for setting, url in urls.items():
        if not uses_sentinel(url):
            continue
        key = OPTIONS_OF[setting]
        found = options.get(key) or {}
        if not isinstance(found, Mapping) or not found.get("master_name"):
            problems.append(
                f"celery.{setting} is a sentinel:// URL but celery.options.{key}.master_name "
                "is not set: set it to the master's name in the sentinels' "
                "`sentinel monitor <name> ...` (the workers need the same setting)"
            )
        elif not isinstance(found.get("sentinel_kwargs") or {}, Mapping):
            problems.append(
                f"celery.options.{key}.sentinel_kwargs must be a mapping of connection "
                "arguments for the sentinels (e.g. password)"
            )
    return problems


def master_clients(
    connparams: Mapping[str, Any], transport_options: Mapping[str, Any], timeouts: dict[str, float]
) -> Callable[[], redis.Redis]:
    """A factory of clients of the current master, from the parameters Celery's
    ``SentinelBackend`` made of the URL (``hosts``, ``db``, password, TLS) and its transport
    options. Celery's ``sentinel_kwargs`` default to none at all, so the bridge's ``timeouts``
    also apply to the sentinels unless ``sentinel_kwargs`` set their own."""
    params = dict(connparams)
    hosts = [(str(host["host"]), int(host["port"])) for host in params.pop("hosts")]
    params.update(timeouts)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        min_other_sentinels=int(transport_options.get("min_other_sentinels", 0)),
        sentinel_kwargs={**timeouts, **(transport_options.get("sentinel_kwargs") or {})},
        **params,
    )
    master_name = str(transport_options["master_name"])

    def connect() -> redis.Redis:
        client: redis.Redis = sentinel.master_for(master_name)  # type: ignore[no-untyped-call]
        return client

    return connect


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The sentinels a ``sentinel://`` URL lists (``;``-separated), as kombu reads them."""
    parts = [url_to_parts(chunk) for chunk in url.split(";") if chunk.strip()]
    return [(part.hostname or "127.0.0.1", part.port or DEFAULT_PORT) for part in parts]


def unknown_masters(
    urls: Mapping[str, str], options: Mapping[str, Any], timeout: float = 1.0
) -> list[str]:
    """What is wrong with the ``master_name`` of each ``sentinel://`` URL among ``urls``: a
    message naming the setting when sentinels answered and none monitors that name. Sentinels
    that do not answer prove nothing (an outage, retried at run time): no message then."""
    problems = []
    for setting, url in urls.items():
        if not uses_sentinel(url):
            continue
        key = OPTIONS_OF[setting]
        transport = options.get(key) or {}
        name = str(transport.get("master_name"))
        answered: list[str] = []
        known: set[str] = set()
        for host, port in sentinel_addresses(url):
            params: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            params.update(transport.get("sentinel_kwargs") or {})
            client: Any = redis.Redis(host=host, port=port, **params)
            try:
                with client:
                    masters = client.sentinel_masters()
            except redis.RedisError:
                continue
            answered.append(f"{host}:{port}")
            known.update(str(master) for master in masters)
            if name in masters:
                break
        else:
            if answered:
                problems.append(
                    f"celery.options.{key}.master_name: no sentinel of celery.{setting} "
                    f"({', '.join(answered)}) monitors a master named {name!r} (they know: "
                    f"{', '.join(sorted(known)) or 'none'}): set it to the name in their "
                    "`sentinel monitor <name> ...`"
                )
    return problems
