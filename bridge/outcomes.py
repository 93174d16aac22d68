"""Where a record's work ends: a finished offset, or a dead letter that finishes it once written.

Every final task state, every lost task given up and every rejected record goes through here,
so observers hear of each exactly once and the engine is told exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.vocabulary import FAILED, Outcome, Reason, TaskState, default_dlq_topic
from bridge.dead_letters import DeadLetterWriter, Failure
from bridge.events import Observers
from bridge.intake import Work
from bridge.records import Record
from bridge.results import ResultWatcher, TaskEvent
from bridge.settings import Route


class Outcomes:
    def __init__(
        self,
        engine: WorkEngine[Work],
        dead_letters: DeadLetterWriter,
        watcher: ResultWatcher,
        observers: Observers,
        clock: Callable[[], float],
    ) -> None:
        self._engine = engine
        self._dlq = dead_letters
        self._watcher = watcher
        self._events = observers
        self._clock = clock

    def conclude(self, job: Job[Work], event: TaskEvent) -> None:
        """A final task state becomes a finished offset or a dead letter."""
        record, route = job.item.record, job.item.route
        duration = self._clock() - job.first_dispatch if job.dispatches else None
        state = TaskState(event.state)
        if state is TaskState.SUCCESS:
            self._events.on_task_finished(record, route.task, Outcome.SUCCESS, duration)
            self._engine.finish(job.tp, job.offset, job.epoch)
            return
        reason, outcome = FAILED[state]
        self._events.on_task_finished(record, route.task, outcome, duration)
        failure = Failure(
            reason=reason,
            task_name=route.task,
            task_id=job.task_id,
            attempts=job.attempts,
            error_class=event.error_class or "",
            error_message=event.error_message or "",
            traceback=event.traceback or "",
        )
        self.dead_letter(record, route, job.epoch, failure)

    def timed_out(self, job: Job[Work]) -> None:
        """A lost task with no re-sends left (the engine released it): dead-letter its record."""
        record, route = job.item.record, job.item.route
        self._watcher.unwatch(job.task_id)
        self._events.on_task_finished(record, route.task, Outcome.TIMEOUT, None)
        failure = Failure(
            reason=Reason.TASK_TIMEOUT,
            task_name=route.task,
            task_id=job.task_id,
            attempts=job.attempts,
            error_class="TaskTimeout",
            error_message=f"no final state within {route.task_timeout:.0f}s "
            f"after {job.dispatches} dispatches",
        )
        self.dead_letter(record, route, job.epoch, failure)

    def dead_letter(
        self, record: Record, route: Route | None, epoch: int, failure: Failure
    ) -> None:
        """Write the dead letter; the offset finishes when Kafka acknowledged it."""
        topic = route.dlq_for(record.topic) if route else default_dlq_topic(record.topic)

        def written() -> None:
            self._events.on_dead_lettered(record, failure.reason)
            self._engine.finish(record.tp, record.offset, epoch)

        self._dlq.send(record, topic, failure, written, lambda: self._engine.owns(record.tp, epoch))
