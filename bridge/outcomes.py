"""Where a record's work ends: a finished offset, or a dead letter that finishes it once written.

Every final task state, every lost task given up and every rejected record goes through here,
so observers hear of each exactly once and the engine is told exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.vocabulary import FAILED, Outcome, Reason, TaskState, default_dlq_topic
from bridge.dead_letters import DeadLetterWriter, Failure
from bridge.events import Observers
from bridge.intake import Work
from bridge.records import Record
from bridge.result_source import ResultSource
from bridge.results import TaskEvent
from bridge.settings import Route


class Outcomes:
    def __init__(
        self,
        engine: WorkEngine[Work],
        dead_letters: DeadLetterWriter,
        watcher: ResultSource,
        observers: Observers,
        clock: Callable[[], float],
    ) -> None:
        self._engine = engine
        self._dlq = dead_letters
        self._watcher = watcher
        self._events = observers
        self._clock = clock

    def conclude(self, job: Job[Work], event: TaskEvent) -> None:
        """A final task state becomes finished offsets or dead letters (a batch: one per
        record, each carrying the batch's task id and size)."""
        route = job.item.route
        duration = self._clock() - job.first_dispatch if job.dispatches else None
        state = TaskState(event.state)
        if state is TaskState.SUCCESS:
            for member in job.parts():
                self._events.on_task_finished(
                    member.item.record, route.task, Outcome.SUCCESS, duration
                )
                self._engine.finish(member.tp, member.offset, member.epoch)
            return
        reason, outcome = FAILED[state]
        failure = Failure(
            reason=reason,
            task_name=route.task,
            task_id=job.task_id,
            attempts=job.attempts,
            error_class=event.error_class or "",
            error_message=event.error_message or "",
            traceback=event.traceback or "",
        )
        self._dead_letter_all(job, outcome, duration, failure)

    def timed_out(self, job: Job[Work]) -> None:
        """A lost task with no re-sends left (the engine released it): dead-letter its
        record(s)."""
        route = job.item.route
        self._watcher.unwatch(job.task_id)
        failure = Failure(
            reason=Reason.TASK_TIMEOUT,
            task_name=route.task,
            task_id=job.task_id,
            attempts=job.attempts,
            error_class="TaskTimeout",
            error_message=f"no final state within {route.task_timeout:.0f}s "
            f"after {job.dispatches} dispatches",
        )
        self._dead_letter_all(job, Outcome.TIMEOUT, None, failure)

    def _dead_letter_all(
        self, job: Job[Work], outcome: str, duration: float | None, failure: Failure
    ) -> None:
        if job.members is not None:
            failure = replace(failure, batch_task_id=job.task_id, batch_size=len(job.members))
        for member in job.parts():
            record = member.item.record
            self._events.on_task_finished(record, job.item.route.task, outcome, duration)
            self.dead_letter(record, job.item.route, member.epoch, failure)

    def dead_letter(
        self, record: Record, route: Route | None, epoch: int, failure: Failure
    ) -> None:
        """Write the dead letter; the offset finishes when Kafka acknowledged it."""
        topic = route.dlq_for(record.topic) if route else default_dlq_topic(record.topic)

        def written() -> None:
            self._events.on_dead_lettered(record, failure.reason)
            self._engine.finish(record.tp, record.offset, epoch)

        self._dlq.send(record, topic, failure, written, lambda: self._engine.owns(record.tp, epoch))
