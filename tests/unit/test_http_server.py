"""The ops endpoint's server mechanics, on real sockets: a client cannot hold a thread for ever
(request deadline) and a flood of connections cannot create unbounded threads (a slot limit,
503 beyond it). The routes themselves are tested in test_metrics.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bridge.http_server import OpsApp, OpsServer, Probes


def app() -> OpsApp:
    probes = Probes(
        last_iteration=time.monotonic,
        stopping=lambda: False,
        redis_ok=lambda: True,
        kafka_ok=lambda: True,
    )
    return OpsApp(None, probes, lambda: {"partitions": []})


@pytest.fixture
def server() -> Iterator[OpsServer]:
    ops = OpsServer(app(), "127.0.0.1", 0, request_timeout=1.0, max_connections=4)
    ops.start()
    yield ops
    ops.stop()


def connect(server: OpsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closed ``sock`` (a recv timeout of 10 s fails the test)."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        read_all(sock)
    return time.monotonic() - started


def get(server: OpsServer, path: str) -> bytes:
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        return read_all(sock)


def request_threads() -> int:
    return threading.active_count()


def test_a_client_that_sends_nothing_is_disconnected(server: OpsServer) -> None:
    with connect(server) as sock:
        assert 0.5 < closed_after(sock) < 5.0


def test_a_client_that_sends_slowly_is_cut_at_the_deadline(server: OpsServer) -> None:
    """Each byte comes well within any per-read timeout; the request as a whole is late."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # reset or broken pipe once the server has hung up
            while time.monotonic() - started < 5:
                sock.sendall(b"X")
                time.sleep(0.1)
        assert time.monotonic() - started < 5.0


def test_a_flood_of_connections_gets_503_with_bounded_threads() -> None:
    # a long deadline: the held connections must keep their slots however slow this machine is
    server = OpsServer(app(), "127.0.0.1", 0, request_timeout=30.0, max_connections=4)
    server.start()
    try:
        flood_while_full(server)
    finally:
        server.stop()


def flood_while_full(server: OpsServer) -> None:
    before = request_threads()
    held = [connect(server) for _ in range(4)]  # each holds a slot, sending nothing
    try:
        time.sleep(0.2)
        flood = [connect(server) for _ in range(20)]
        answers = []
        for sock in flood:
            with sock:
                answers.append(read_all(sock))
        assert request_threads() - before <= 4
        assert all(answer.startswith(b"HTTP/1.0 503") for answer in answers)
        assert b"busy" in answers[0]
    finally:
        for sock in held:
            sock.close()
    # the slots come back: a probe is answered again
    deadline = time.monotonic() + 5
    while not get(server, "/healthz").startswith(b"HTTP/1.0 200"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_slots_come_back_after_the_deadline(server: OpsServer) -> None:
    held = [connect(server) for _ in range(4)]
    try:
        for sock in held:
            closed_after(sock)  # the server gave up on each
        assert get(server, "/healthz").startswith(b"HTTP/1.0 200")
    finally:
        for sock in held:
            sock.close()


def test_a_response_the_client_does_not_read_does_not_hold_the_thread() -> None:
    big = {"partitions": [{"topic": "t" * 100, "partition": p} for p in range(200_000)]}
    probes = app().probes
    ops = OpsServer(OpsApp(None, probes, lambda: big), "127.0.0.1", 0, request_timeout=1.0)
    ops.start()
    try:
        before = request_threads()
        sock = connect(ops)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 5
        time.sleep(0.5)
        while request_threads() > before:
            assert time.monotonic() < deadline, (
                "the handler still writes to a client that reads nothing"
            )
            time.sleep(0.1)
        sock.close()
    finally:
        ops.stop()
