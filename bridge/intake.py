"""From a consumed record to what the engine should do with it: a job to send, a dead letter,
or nothing (finish the offset).

Routing, decoding and building the Celery call happen here, on the loop's thread, without I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.core.jobs import Job
from bridge.core.policy import RoutePolicy
from bridge.core.vocabulary import DLQ_SUFFIX, Ordering, Reason
from bridge.dead_letters import Failure
from bridge.dispatcher import TaskRequest
from bridge.payloads import DecodeError, build_call, kafka_headers
from bridge.records import Record
from bridge.routing import Router
from bridge.settings import Route, Settings
from bridge.task_ids import task_id_for
from bridge.tracing import trace_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Work:
    """What the loop keeps with each job: the record, its route and its task message."""

    record: Record
    route: Route
    request: TaskRequest


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
        try:
            args, kwargs = build_call(route, record)
        except DecodeError as exc:
            # per record: DEBUG only; the DLQ record and the counters carry it
            log.debug("cannot decode %s: %s", record.coordinates(), exc)
            return Rejected(
                route,
                Failure(
                    reason=Reason(exc.reason),
                    task_name=route.task,
                    error_class=type(exc).__name__,
                    error_message=str(exc),
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
        request = TaskRequest(
            task_id=task_id,
            name=route.task,
            args=args,
            kwargs=kwargs,
            queue=route.queue,
            headers={**kafka_headers(record), **trace_headers(record.headers, task_id)},
            label=f"<kafka {record.coordinates()}>",
        )
        work = Work(record, route, request)
        return Job(record.tp, record.offset, record.key, epoch, task_id, work)

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
