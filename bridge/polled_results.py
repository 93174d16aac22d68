"""A result source that polls: the stored states of the watched task ids, read in sweeps.

For result backends with nothing the bridge could subscribe to (Celery's database backend,
:mod:`bridge.db_results`; any other backend through Celery's own API,
:mod:`bridge.generic_results`). A thread sweeps: it reads the states of every watched id in
batches (how is the subclass's :meth:`PolledResults._read`), reports each final state once and
each progress state (STARTED, RETRY) once per change, and waits :func:`sweep_interval` before
the next. The ledger's pre-send read (:meth:`PolledResults.stored_finals`) uses the same reads.

**Sweep interval**: a sweep costs ``ceil(open / CHUNK)`` reads. With few open tasks the bridge
sweeps every :data:`MIN_INTERVAL` seconds; as open tasks grow the interval grows so that the
sweeps stay within :data:`QUERY_BUDGET` reads per second, up to ``results.reconcile_interval``
at most, beyond which the budget is exceeded rather than outcomes delayed further.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

from bridge.io_retry import OutageLog
from bridge.results import TaskEvent

log = logging.getLogger(__name__)

#: task ids per batched read (an ``IN (…)`` list: under SQLite's 999 bound parameters)
CHUNK = 500
#: seconds between sweeps while at most a chunk of tasks is open
MIN_INTERVAL = 0.25
#: reads per second the sweeps aim to stay within as open tasks grow
QUERY_BUDGET = 20.0


def sweep_interval(open_tasks: int, longest: float) -> float:
    """Seconds until the next sweep with ``open_tasks`` watched ids (see the module doc)."""
    queries = math.ceil(open_tasks / CHUNK)
    return min(max(MIN_INTERVAL, queries / QUERY_BUDGET), max(longest, MIN_INTERVAL))


def chunks(task_ids: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(task_ids), size):
        yield task_ids[start : start + size]


class PolledResults:
    """A :class:`~bridge.result_source.ResultSource` that sweeps; subclasses read."""

    #: what an outage is logged as
    name = "result backend"
    #: errors that mean the backend is away (an outage, logged once), not a bug
    outage_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, longest_interval: float = 5.0) -> None:
        self._longest = longest_interval
        #: watched ids and the last non-final state reported for each
        self._watched: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, self.name)
        self._swept = threading.Event()
        #: sweeps run so far
        self.sweeps = 0
        self.completions: queue.SimpleQueue[TaskEvent] = queue.SimpleQueue()

    # -- what a subclass provides -------------------------------------------------------
    def _read(self, task_ids: Sequence[str]) -> Iterator[TaskEvent]:
        """The stored states of ``task_ids`` (ids with none omitted); raises when it cannot."""
        raise NotImplementedError

    def _idle_check(self) -> None:
        """Called instead of a sweep while nothing is watched: raise if the backend is away."""

    def _describe(self, exc: BaseException) -> str:
        """An outage error in one line, with no secret."""
        return repr(exc)

    def _close(self) -> None:
        """Release connections once stopped."""

    # -- called from the consumer loop ------------------------------------------
    def watch(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._watched.setdefault(task_id, None)

    def unwatch(self, task_id: str) -> None:
        with self._lock:
            self._watched.pop(task_id, None)

    @property
    def healthy(self) -> bool:
        return self._swept.is_set() and not self._outage.down

    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]:
        """Final results stored for ``task_ids`` (batched reads); raises what the reads raise
        (the ledger treats a failed read as nothing known)."""
        return {event.task_id: event for event in self._read(task_ids) if event.final}

    # -- lifecycle ----------------------------------------------------------------
    def start(self, wait: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="ckb-result-sweeper", daemon=True)
        self._thread.start()
        if not self._swept.wait(wait):
            log.warning("%s not read after %.0fs; retrying", self.name, wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                open_tasks = self._sweep()
            except self.outage_errors as exc:
                self._outage.failed(RuntimeError(self._describe(exc)))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("result sweep failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self._swept.set()
            self._outage.recovered()
            self._stop.wait(sweep_interval(open_tasks, self._longest))

    def _sweep(self) -> int:
        """Read the states of every watched id; report finals and changed progress states."""
        with self._lock:
            due = list(self._watched)
        self.sweeps += 1
        if not due:
            self._idle_check()
            return 0
        for event in self._read(due):
            self._report(event)
        return len(due)

    def _report(self, event: TaskEvent) -> None:
        with self._lock:
            if event.task_id not in self._watched:
                return
            if event.final:
                del self._watched[event.task_id]
            elif self._watched[event.task_id] == event.state:
                return  # reported already: progress states are reported once per change
            else:
                self._watched[event.task_id] = event.state
        self.completions.put(event)
