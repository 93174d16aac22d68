"""Tasks the engine declares lost: sent again, dead-lettered, or held when their outcome can
never be seen (a worker check found results that are not stored where the bridge reads)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.events import Observers
from bridge.intake import Work
from bridge.outcomes import Outcomes
from bridge.sender import PUBLISH_BACKOFF, Sender

log = logging.getLogger(__name__)


class LostTasks:
    def __init__(
        self,
        engine: WorkEngine[Work],
        sender: Sender,
        outcomes: Outcomes,
        observers: Observers,
        clock: Callable[[], float],
    ) -> None:
        self._engine = engine
        self._sender = sender
        self._outcomes = outcomes
        self._events = observers
        self._clock = clock
        #: task names whose outcome the bridge can never see (set by the worker check, from
        #: its own thread: a new frozenset replaces the old one, never mutated)
        self.unobservable: frozenset[str] = frozenset()

    def hold_lost_tasks_of(self, tasks: frozenset[str]) -> None:
        self.unobservable = frozenset(tasks)

    def _unseen(self, job: Job[Work]) -> bool:
        return job.item.route.task in self.unobservable

    def handle(self) -> None:
        """Ask the engine what is lost now and act on it (one publish attempt per turn while
        the broker refuses; the rest are asked about again after the backoff)."""
        expiry = self._engine.expire(self._clock(), self._unseen)
        refused = False
        for job in expiry.resend:
            log.warning(
                "task %s for %s has no final state after %.0fs; sending it again",
                job.task_id,
                job.item.record.coordinates(),
                job.item.route.task_timeout,
            )
            refused = refused or not self._sender.resend(job)
            if refused:
                self._engine.retry_later(job, self._clock() + PUBLISH_BACKOFF)
        for job in expiry.timed_out:
            self._outcomes.timed_out(job)
        for job in expiry.held:  # neither run again nor dead-lettered: a configuration error
            self._events.on_unobservable(job.item.record, job.item.route.task)
