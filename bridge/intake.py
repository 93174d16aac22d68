"""From a consumed record to what the engine should do with it: a job to send, a dead letter,
or nothing (finish the offset); and, when its turn comes, the job's Celery call.

Routing, decoding and building the Celery call happen here, on the loop's thread, without I/O.
A waiting job keeps only its record's bytes (what the byte budgets count): the value is
decoded when the job is sent, and the decoded call is not kept after the publish (a record
that decodes to 25 times its size would otherwise hold that memory while it waits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.core.jobs import Job
from bridge.core.policy import BatchPolicy, RoutePolicy
from bridge.core.vocabulary import DLQ_SUFFIX, Ordering, Reason
from bridge.dead_letters import Failure
from bridge.dispatcher import TaskRequest
from bridge.payloads import DecodeError, build_call, kafka_headers
from bridge.records import Record
from bridge.routing import Router
from bridge.settings import Route, Settings
from bridge.task_ids import task_id_for
from bridge.tracing import message_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Work:
    """What the loop keeps with each job: the record and its route."""

    record: Record
    route: Route


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead-letter topic without a task."""

    route: Route | None
    failure: Failure


class Intake:
    def __init__(self, settings: Settings, router: Router) -> None:
        self._settings = settings
        self._router = router
        self._policies: dict[int, RoutePolicy] = {}

    def policy_for(self, topic: str) -> RoutePolicy | None:
        """The engine's view of ``topic``'s route; None when no route matches."""
        route = self._router.match(topic)
        if route is None:
            return None
        policy = self._policies.get(id(route))
        if policy is None:
            policy = self._policies[id(route)] = RoutePolicy(
                ordering=Ordering(route.ordering),
                max_in_flight=route.max_in_flight,
                max_in_flight_bytes=route.max_in_flight_bytes,
                name=route.topic,
                batch=None if route.batch is None else BatchPolicy(**route.batch.model_dump()),
                task_timeout=route.task_timeout,
                max_redispatch=route.max_redispatch,
                queue=route.queue or "",
            )
        return policy

    def read(self, record: Record, epoch: int) -> Job[Work] | Rejected | None:
        """The job for ``record``; a rejection to dead-letter; None: nothing to do."""
        route = self._router.match(record.topic)
        if route is None:
            return self._unrouted(record)
        if record.headers_unreadable:
            return rejected(
                route,
                DecodeError(
                    "a header name is not valid UTF-8, so the record's headers cannot be read "
                    "(they are not in this dead letter); fix the producer"
                ),
            )
        settings = self._settings
        task_id = task_id_for(
            settings.kafka.group_id,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            settings.dedupe_generation,
        )
        return Job(record.tp, record.offset, record.key, epoch, task_id, Work(record, route))

    @staticmethod
    def request_for(job: Job[Work]) -> TaskRequest:
        """The job's task message; raises :class:`DecodeError` when its record does not fit
        its route (the value is decoded here, when the job is sent)."""
        record, route = job.item.record, job.item.route
        args, kwargs = build_call(route, record)
        return TaskRequest(
            task_id=job.task_id,
            name=route.task,
            args=args,
            kwargs=kwargs,
            queue=route.queue,
            headers={**kafka_headers(record), **message_headers(record, job.task_id, route)},
            label=f"<kafka {record.coordinates()}>",
            # a re-sent copy starts where the lost one was: its retry budget is not reset
            retries=job.retries_seen,
        )

    def _unrouted(self, record: Record) -> Rejected | None:
        if self._settings.unrouted == "skip" or record.topic.endswith(DLQ_SUFFIX):
            return None
        return Rejected(
            None,
            Failure(
                reason=Reason.NO_ROUTE,
                error_class="NoRoute",
                error_message=f"no route matches topic {record.topic!r}; add one under routes:",
            ),
        )


def rejected(route: Route | None, error: Exception) -> Rejected:
    """The dead letter of a record that cannot become a task: ``decode_error`` with what was
    wrong (never the payload). A :class:`DecodeError` is the record's fault; anything else
    raised while building its message is the bridge's (or kombu's) limit or bug, named as such.
    """
    if isinstance(error, DecodeError):
        reason, error_class, message = Reason(error.reason), type(error).__name__, str(error)
    else:
        reason, error_class = Reason.DECODE_ERROR, f"BridgeError.{type(error).__name__}"
        message = (
            f"the bridge could not turn this record into a task message ({type(error).__name__});"
            " its log has where (ERROR, with the record's coordinates); replay the letter once"
            " the cause is fixed"
        )
    return Rejected(
        route,
        Failure(
            reason=reason,
            task_name=route.task if route else "",
            error_class=error_class,
            error_message=message,
        ),
    )
