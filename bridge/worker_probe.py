"""Asking the Celery workers (remote control ``inspect``) whether the bridge can see the
outcomes of the tasks it sends, before records are run again and again for nothing.

The bridge learns a task's outcome only from the result backend. A task whose result is never
stored where the bridge reads it (``ignore_result=True``, ``task_ignore_result``, another
backend, a serializer the bridge cannot read) looks lost after ``task_timeout``: it would be
run ``1 + max_redispatch`` times and dead-lettered. These checks find that up front.
``ckb check-config --probe`` prints them; ``ckb run`` logs them once at start.

:func:`findings` is pure (it reads the workers' replies); :func:`probe` does the asking.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bridge.backend_urls import scheme
from bridge.secrets import mask_url
from bridge.settings import Route, Settings

log = logging.getLogger(__name__)

#: Celery's ``registered`` reply for a task with attributes: ``"name [ignore_result=True]"``
_IGNORED = re.compile(r"^(?P<name>\S+) \[.*\bignore_result=True\b.*\]$")


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "error": outcomes cannot be seen; "warning": may not be, or cannot tell
    message: str  # what is wrong and the fix
    #: for an error: the route tasks whose outcome the bridge can never see
    tasks: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Replies:
    """What the workers answered, per worker name."""

    conf: dict[str, dict[str, Any]]
    registered: dict[str, list[str]]
    queues: dict[str, list[dict[str, Any]]]


def _where(url: object) -> tuple[str, str, int | None, str] | None:
    """A result backend URL without its credentials (Celery masks passwords in replies)."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url)
        return (parts.scheme, parts.hostname or "", parts.port, parts.path.rstrip("/") or "/0")
    except ValueError:
        return None


def findings(replies: Replies, settings: Settings, bridge_serializer: str) -> list[Finding]:
    if not replies.conf and not replies.registered:
        return [
            Finding(
                "warning",
                "no Celery worker answered a remote-control inspect: cannot check that the "
                "bridge sees task outcomes (workers down, or worker_enable_remote_control=False)",
            )
        ]
    out: list[Finding] = []
    ours = _where(settings.celery.result_backend)
    longest = max(route.task_timeout for route in settings.routes)
    for worker, conf in sorted(replies.conf.items()):
        its_tasks = _tasks_served_by(worker, replies, settings)
        backend = conf.get("result_backend")
        if not backend or str(backend).lower() in ("disabled", "none"):
            out.append(
                Finding(
                    "error",
                    f"worker {worker} stores no results (result_backend "
                    f"unset): set it to {mask_url(settings.celery.result_backend)}",
                    its_tasks,
                )
            )
        elif _rpc_mismatch(str(backend), settings.celery.result_backend):
            out.append(
                Finding(
                    "error",
                    f"worker {worker} stores results in {mask_url(str(backend))}, the bridge "
                    f"reads {mask_url(settings.celery.result_backend)}: with rpc:// both must "
                    "use it (results are replies to the sender, not stored); set the same "
                    "result_backend on both",
                    its_tasks,
                )
            )
        elif _where(backend) != ours:
            out.append(
                Finding(
                    "warning",
                    f"worker {worker} stores results in {mask_url(str(backend))}, "
                    f"the bridge reads {mask_url(settings.celery.result_backend)}: "
                    "if they are not the same server and database, set "
                    "celery.result_backend to the workers' result_backend",
                )
            )
        if conf.get("task_ignore_result") is True:
            out.append(
                Finding(
                    "error",
                    f"worker {worker} has task_ignore_result=True: no outcome "
                    "is ever stored; turn it off for the tasks the bridge sends",
                    its_tasks,
                )
            )
        serializer = conf.get("result_serializer")
        if serializer is not None and serializer != bridge_serializer:
            out.append(
                Finding(
                    "error",
                    f"worker {worker} stores results as {serializer!r}, the "
                    f"bridge reads {bridge_serializer!r}: set "
                    f"celery.options.result_serializer: {serializer} (and "
                    "accept_content) or result_serializer=json on the workers",
                    its_tasks,
                )
            )
        rpc = scheme(str(backend)) == "rpc"
        if rpc and not conf.get("result_persistent"):
            out.append(
                Finding(
                    "warning",
                    f"worker {worker} sends rpc:// replies transient (result_persistent off): "
                    "a RabbitMQ restart drops those not yet read, and their tasks run again "
                    "after task_timeout; set result_persistent=True on the workers",
                )
            )
        expires = conf.get("result_expires")  # rpc:// stores nothing that could expire
        if not rpc and isinstance(expires, int | float) and 0 < expires < longest:
            out.append(
                Finding(
                    "warning",
                    f"worker {worker} keeps results {expires:.0f}s, less than "
                    f"the longest task_timeout ({longest:.0f}s): a result can "
                    "expire before the bridge reads it; raise result_expires",
                )
            )
    out.extend(_task_findings(replies, settings.routes))
    out.extend(_queue_findings(replies, settings))
    return out


def _rpc_mismatch(worker_backend: str, bridge_backend: str) -> bool:
    """One side uses ``rpc://`` and the other not: no outcome can ever reach the bridge."""
    return (scheme(worker_backend) == "rpc") != (scheme(bridge_backend) == "rpc")


def _tasks_served_by(worker: str, replies: Replies, settings: Settings) -> frozenset[str]:
    """The route tasks whose queue ``worker`` consumes (all of them when it did not say)."""
    queues = replies.queues.get(worker)
    if queues is None:
        return frozenset(route.task for route in settings.routes)
    names = {queue.get("name") for queue in queues}
    return frozenset(
        route.task
        for route in settings.routes
        if (route.queue or settings.celery.default_queue) in names
    )


def unobservable_tasks(found: list[Finding]) -> frozenset[str]:
    """Every task an error says the bridge can never see the outcome of."""
    return frozenset().union(*(f.tasks for f in found if f.level == "error"))


def _task_findings(replies: Replies, routes: list[Route]) -> list[Finding]:
    out = []
    known: set[str] = set()
    ignoring: dict[str, str] = {}
    for worker, names in replies.registered.items():
        for line in names:
            known.add(line.split(" ", 1)[0])
            match = _IGNORED.match(line)
            if match:
                ignoring[match["name"]] = worker
    for task in sorted({route.task for route in routes}):
        if task in ignoring:
            out.append(
                Finding(
                    "error",
                    f"task {task} has ignore_result=True on worker "
                    f"{ignoring[task]}: the bridge can never see its outcome; "
                    "remove ignore_result from the task",
                    frozenset({task}),
                )
            )
        elif replies.registered and task not in known:
            out.append(
                Finding(
                    "warning",
                    f"no worker that answered registers task {task}: its "
                    "tasks would wait in the queue (check the task name "
                    "and the workers' -A app)",
                )
            )
    return out


def _queue_findings(replies: Replies, settings: Settings) -> list[Finding]:
    if not replies.queues:
        return []
    consumed = {q.get("name") for queues in replies.queues.values() for q in queues}
    wanted = {route.queue or settings.celery.default_queue for route in settings.routes}
    return [
        Finding(
            "warning",
            f"no worker that answered consumes queue {name!r}: its tasks "
            "would wait until one does (celery worker -Q)",
        )
        for name in sorted(wanted - consumed)
    ]


def probe(app: Any, settings: Settings, timeout: float = 2.0) -> list[Finding]:
    """Ask the workers and judge their answers; never raises (a failure is a finding)."""
    try:
        inspect = app.control.inspect(timeout=timeout)
        replies = Replies(
            conf=inspect.conf(with_defaults=True) or {},
            registered=inspect.registered("ignore_result") or {},
            queues=inspect.active_queues() or {},
        )
    except Exception as exc:  # the broker is away, or remote control refused
        return [
            Finding(
                "warning",
                f"cannot ask the Celery workers ({type(exc).__name__}: "
                f"{mask_url(str(exc))}); outcomes not checked",
            )
        ]
    return findings(replies, settings, str(app.conf.result_serializer))


def log_findings(found: list[Finding]) -> None:
    for finding in found:
        (log.error if finding.level == "error" else log.warning)(
            "worker check: %s", finding.message
        )
    if not found:
        log.info("worker check: the workers store outcomes where the bridge reads them")


class WorkerCheck:
    """Runs :func:`probe` once, on its own thread and Celery app, shortly after start-up."""

    def __init__(
        self,
        settings: Settings,
        make_app: Any,
        on_unobservable: Callable[[frozenset[str]], None] = lambda _tasks: None,
    ) -> None:
        self._settings = settings
        self._make_app = make_app
        #: told the tasks whose lost tasks are to be held rather than run again
        self._on_unobservable = on_unobservable
        self._thread = threading.Thread(target=self._run, name="ckb-worker-check", daemon=True)
        self.found: list[Finding] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        pass  # a daemon thread; at most one inspect round trip left

    def _run(self) -> None:
        app = self._make_app(self._settings.celery)
        try:
            self.found = probe(app, self._settings)
        finally:
            app.close()
        log_findings(self.found)
        blind = unobservable_tasks(self.found)
        if blind:
            log.error(
                "lost tasks of %s will be held (not run again, not dead-lettered, their records "
                "not committed) until the workers are fixed and the bridge restarted",
                ", ".join(sorted(blind)),
            )
            self._on_unobservable(blind)
