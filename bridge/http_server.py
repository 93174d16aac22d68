"""The operations endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and ``/status``.

A stdlib ``ThreadingHTTPServer`` on a daemon thread: every request gets its own thread, so a
slow scrape never delays a probe, and the handlers only read what the loop's observers
already hold (plus two flags of other threads), so serving never touches Kafka, Redis or the
loop. prometheus_client's own ``start_http_server`` serves metrics only; these four routes
need no more than the standard library.

No client can hold the server: a connection has ``request_timeout`` seconds to send its whole
request (not per read: a client trickling a byte at a time is cut at the same deadline), and
again as long to take the answer. At most ``max_connections`` requests are served at once; a
connection beyond that is answered ``503`` at once and closed, from the accepting thread,
without a thread of its own.

The probes and ``/status`` are always served (the container health check and Kubernetes
probes call them); ``/metrics`` only with ``metrics.enabled``, else it answers 404.

- ``/metrics``: the observer's registry in the Prometheus text format (OpenMetrics when the
  scraper asks for it in ``Accept``).
- ``/healthz``: 200 while the consumer loop finished a turn within ``stall_after`` seconds,
  else 503. For a liveness probe: a stuck loop is worth a restart.
- ``/readyz``: 200 when the loop turns, the bridge is not stopping, the result backend (Redis)
  is connected, Kafka answered the lag monitor recently and no dead letter is stuck (refused
  by its topic, or unacknowledged for a minute); else 503 with the reasons.
- ``/status``: the loop's latest per-partition snapshot as JSON, with end offsets and lag
  from the lag monitor (what ``ckb status`` adds in-flight and paused from).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

#: seconds without a finished loop turn after which the bridge counts as stuck
STALL_AFTER = 30.0
#: seconds a client has to send its whole request, and again to take the answer
REQUEST_TIMEOUT = 10.0
#: requests served at once (one thread each); more connections are answered 503 and closed
MAX_CONNECTIONS = 16

_BUSY_BODY = b"busy: too many open connections, try again\n"
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)


@dataclass
class Probes:
    """Liveness and readiness from what other threads already know; no I/O here."""

    last_iteration: Callable[[], float]
    stopping: Callable[[], bool]
    redis_ok: Callable[[], bool]
    kafka_ok: Callable[[], bool]
    clock: Callable[[], float] = time.monotonic
    stall_after: float = STALL_AFTER
    #: why dead letters are stuck (``DeadLetterWriter.problem``), or None
    dead_letters: Callable[[], str | None] = lambda: None
    #: access problems in force (``AccessProblems.reasons``): a password, a certificate, a grant
    access: Callable[[], list[str]] = lambda: []

    def live(self) -> tuple[bool, dict[str, Any]]:
        age = self.clock() - self.last_iteration()
        ok = age <= self.stall_after
        body: dict[str, Any] = {"status": "ok" if ok else "stalled", "loop_age_seconds": age}
        return ok, body

    def ready(self) -> tuple[bool, dict[str, Any]]:
        reasons = []
        live, _ = self.live()
        if not live:
            reasons.append(f"consumer loop has not turned for over {self.stall_after:.0f}s")
        if self.stopping():
            reasons.append("stopping")
        if not self.redis_ok():
            reasons.append("results: result backend not connected")
        if not self.kafka_ok():
            reasons.append("kafka: no answer to the lag monitor recently")
        stuck = self.dead_letters()
        if stuck:
            reasons.append(stuck)
        reasons.extend(self.access())
        if reasons:
            return False, {"status": "not ready", "reasons": reasons}
        return True, {"status": "ready"}


@dataclass
class OpsApp:
    """What the routes serve; the server hands every request to :meth:`respond`.

    Without a ``registry`` (metrics disabled) there is no ``/metrics`` route.
    """

    registry: CollectorRegistry | None
    probes: Probes
    status: Callable[[], dict[str, Any]]
    routes: dict[str, Callable[[str | None], tuple[int, str, bytes]]] = field(init=False)

    def __post_init__(self) -> None:
        self.routes = {
            "/healthz": lambda _: _json(*self.probes.live()),
            "/readyz": lambda _: _json(*self.probes.ready()),
            "/status": lambda _: _json(True, self.status()),
        }
        registry = self.registry
        if registry is not None:
            self.routes["/metrics"] = lambda accept: _metrics(registry, accept)

    def respond(self, path: str, accept: str | None) -> tuple[int, str, bytes]:
        route = self.routes.get(path.split("?", 1)[0].rstrip("/") or "/")
        if route is None:
            return _json(False, {"error": "not found", "paths": sorted(self.routes)}, 404)
        return route(accept)


def _metrics(registry: CollectorRegistry, accept: str | None) -> tuple[int, str, bytes]:
    encoder, content_type = choose_encoder(accept or "")
    return 200, content_type, encoder(registry)


def _json(ok: bool, body: dict[str, Any], failed: int = 503) -> tuple[int, str, bytes]:
    return (200 if ok else failed), "application/json", json.dumps(body).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() does not wait for clients; each has its deadline anyway
    request_queue_size = 64
    app: OpsApp
    request_timeout: float
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        """On the accepting thread: a thread for the request if a slot is free, else 503."""
        if not self.slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name="ckb-http-request",
                daemon=True,
            ).start()
        except BaseException:
            self.slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _refuse(request: socket.socket) -> None:
    """Answer 503 without ever blocking the accepting thread (the answer fits any buffer)."""
    log.debug("ops endpoint busy: refusing a connection")
    with contextlib.suppress(OSError):
        request.setblocking(False)
        # what the client already sent, read so that closing does not reset the answer away
        request.recv(65536)
    with contextlib.suppress(OSError):
        request.send(_BUSY)


class _DeadlineReader(io.RawIOBase):
    """Reads from the socket until one deadline for the whole request, however it trickles."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took too long")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        timeout = self.server.request_timeout
        self.rfile.close()  # the socket's own reader: replaced by one with a deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + timeout))

    def do_GET(self) -> None:
        try:
            code, content_type, body = self.server.app.respond(self.path, self.headers["Accept"])
        except Exception:
            log.exception("cannot serve %s", self.path)
            code, content_type, body = 500, "text/plain", b"internal error\n"
        # the answer, however big, must be taken within one more deadline (sendall's timeout
        # covers the whole send); a TimeoutError ends the request like a late one
        self.connection.settimeout(self.server.request_timeout)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class OpsServer:
    """Serves :class:`OpsApp` on ``host:port`` (0: any free port) from a daemon thread."""

    def __init__(
        self,
        app: OpsApp,
        host: str,
        port: int,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._app = app
        self._address = (host, port)
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        host = self._address[0]
        try:
            server = (_Server6 if ":" in host else _Server)(self._address, _Handler)
        except OSError as exc:
            raise OSError(
                f"cannot serve /healthz, /readyz, /status on {host}:{self._address[1]} "
                f"({exc.strerror}): change metrics.host/metrics.port (0 picks a free port)"
            ) from exc
        server.app = self._app
        server.request_timeout = self._request_timeout
        server.slots = threading.BoundedSemaphore(self._max_connections)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="ckb-http", daemon=True
        )
        self._thread.start()
        log.info(
            "serving %s on http://%s:%d",
            ", ".join(sorted(self._app.routes)),
            f"[{host}]" if ":" in host else host,
            self.port,
        )

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
