"""Sending the jobs the engine selects: ledger first, then one pipelined publish.

A job whose task id the ledger already knows is not sent again: a final result concludes it
(a restart, an earlier owner), a dispatch marker means an earlier owner's task is still on its
way, so it is watched instead. A refused publish puts the jobs back and backs off.

Each job's message is built and encoded on its own before the publish: a record whose value
does not decode, or whose message cannot be encoded, is dead-lettered alone (``decode_error``)
and the others go out. Whatever a single record makes the bridge raise here ends the same way,
so no record can stop the loop or, being redelivered, crash-loop the group.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable

from bridge.batch_markers import BatchMemberMarks, earlier_batches, member_markers
from bridge.batch_requests import batch_request
from bridge.broker_limits import too_large
from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.dispatcher import Dispatcher, EncodedTask, PublishError, TaskRequest
from bridge.events import Observers
from bridge.intake import Intake, Work, rejected
from bridge.outcomes import Outcomes
from bridge.payloads import DecodeError
from bridge.rate_limit import TokenBuckets
from bridge.result_source import Ledger, ResultSource
from bridge.settings import Route

log = logging.getLogger(__name__)

#: seconds the loop waits before sending again after the broker refused a publish
PUBLISH_BACKOFF = 1.0
#: encoded bytes per publish: the rest of a selection waits for the next turn, so the encoded
#: copies of large records never add up to more than this at once
PUBLISH_BYTES = 16 * 2**20


class Sender:
    def __init__(
        self,
        engine: WorkEngine[Work],
        dispatcher: Dispatcher,
        watcher: ResultSource,
        ledger: Ledger,
        outcomes: Outcomes,
        observers: Observers,
        clock: Callable[[], float],
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._buckets = buckets
        self._engine = engine
        self._dispatcher = dispatcher
        self._watcher = watcher
        self._ledger = ledger
        self._outcomes = outcomes
        self._events = observers
        self._clock = clock
        self._backoff_until = 0.0

    def send_selected(self) -> None:
        """Send what the engine lets go now (nothing while backing off after a refusal)."""
        if self._clock() < self._backoff_until:
            return
        batch = self._engine.select(self._clock())
        if not batch:
            return
        fresh = self._not_sent_before(batch)
        encoded = self._encode(self._within_rate(fresh))
        if not encoded:
            return
        sent = [job for job, _ in encoded]
        if not self._publish(encoded):
            self._engine.put_back(sent)
            return
        self._engine.started(sent, self._clock())
        for job in sent:
            for member in job.parts():
                self._events.on_dispatched(member.item.record, job.item.route.task, False)

    def _not_sent_before(self, batch: list[Job[Work]]) -> list[Job[Work]]:
        """The jobs the ledger knows nothing of; the others are concluded, watched, or (a
        batch whose records an earlier owner sent in other batches) formed again."""
        known = self._ledger.lookup(_ids_to_look_up(batch))
        fresh = []
        for job in batch:
            if job.task_id in known.finals:  # done before (a restart, an earlier owner)
                self._engine.settled(job)
                self._outcomes.conclude(job, known.finals[job.task_id])
            elif job.task_id in known.in_progress:  # sent by an earlier owner: watch it
                self._watcher.watch([job.task_id])
                self._engine.started([job], self._clock())
            elif earlier := earlier_batches(job, known.batch_of):
                # its records went out in other batches: form those again, watch them
                for task_id, offsets in earlier:
                    self._engine.remember_batch(job, task_id, offsets)
                self._engine.put_back([job])
            else:
                fresh.append(job)
        return fresh

    def resend(self, job: Job[Work]) -> bool:
        """Send a lost task again, unless its result appeared meanwhile; False: not sent (the
        broker refused it; the caller asks again later)."""
        # Celery never re-stores a SUCCESS, so read the key before waiting on the same id again
        final = self._ledger.lookup([job.task_id]).finals.get(job.task_id)
        if final is not None:
            if self._engine.complete(job.task_id, self._clock()) is not None:
                self._outcomes.conclude(job, final)
            return True
        encoded = self._encode([job])
        if not encoded:
            return True  # dead-lettered instead (cannot happen for a message sent before)
        if not self._publish(encoded):
            return False
        self._engine.resent(job, self._clock())
        for member in job.parts():
            self._events.on_dispatched(member.item.record, job.item.route.task, True)
        return True

    def observe_queues(self) -> None:
        """Read how many messages wait in each queue with tasks in flight (one call each)."""
        now = self._clock()
        for name, progress in self._engine.queues().items():
            if progress.in_flight:
                depth = self._dispatcher.queue_depth(name or None)
                if depth is not None:
                    self._engine.observe_depth(name, depth, now)

    def _within_rate(self, jobs: list[Job[Work]]) -> list[Job[Work]]:
        """The jobs the routes' rate limits let go now; the others wait (back in order, their
        route held until its next token is due)."""
        if self._buckets is None:
            return jobs
        wanted: dict[int, list[Job[Work]]] = {}
        for job in jobs:
            if job.item.route.rate_limit is not None:
                wanted.setdefault(id(job.item.route), []).append(job)
        if not wanted:
            return jobs
        now, waiting = self._clock(), set[int]()
        for limited in wanted.values():
            route = limited[0].item.route
            rate = route.tokens_per_second
            assert rate is not None
            grant = self._buckets.take(route.topic, rate, route.burst, len(limited))
            if grant.granted < len(limited):
                waiting.update(id(job) for job in limited[grant.granted :])
                self._engine.put_back(limited[grant.granted :])
                self._engine.hold(route.topic, now + grant.wait)
            self._events.on_rate_limited(route.topic, grant.granted, grant.wait)
        return [job for job in jobs if id(job) not in waiting]

    def _encode(self, jobs: list[Job[Work]]) -> list[tuple[Job[Work], EncodedTask]]:
        """Each job's encoded message; a job whose record cannot become one is dead-lettered
        (its decoded call lives only until its message is encoded)."""
        encoded: list[tuple[Job[Work], EncodedTask]] = []
        size = 0
        for index, job in enumerate(jobs):
            if size >= PUBLISH_BYTES:
                self._engine.put_back(jobs[index:])  # sent next turn
                break
            try:
                request = self._request_for(job)
                if request is None:  # a batch none of whose records decoded
                    self._engine.settled(job)
                    continue
                task = self._dispatcher.encode(request)
                limit = self._dispatcher.max_message_bytes
                if limit is not None and task.size > limit:  # the broker would refuse it
                    raise DecodeError(too_large(task.size, limit))
                encoded.append((job, task))
                size += task.size
            except Exception as exc:  # this record's fault, or a limit of ours: its alone
                if not isinstance(exc, DecodeError):
                    where = "".join(traceback.format_tb(exc.__traceback__))
                    # the type and the frames only: an exception's text may quote the payload
                    log.error(
                        "cannot build the task message of %s (%s), dead-lettering it:\n%s",
                        job.item.record.coordinates(),
                        type(exc).__name__,
                        where,
                    )
                if job.dispatches:  # a re-send: out of flight first
                    self._watcher.unwatch(job.task_id)
                    self._engine.complete(job.task_id, self._clock())
                else:
                    self._engine.settled(job)
                failure = rejected(job.item.route, exc).failure
                for member in job.parts():  # a batch's message: each of its records
                    self._outcomes.dead_letter(
                        member.item.record, member.item.route, member.epoch, failure
                    )
        return encoded

    def _request_for(self, job: Job[Work]) -> TaskRequest | None:
        """The job's task message; a batch's records that cannot be part of it are
        dead-lettered alone (None: none is left)."""
        if job.members is None:
            return Intake.request_for(job)
        request, failed = batch_request(job)
        route = job.item.route
        for member, exc in failed:
            failure = rejected(route, exc).failure
            self._outcomes.dead_letter(member.item.record, route, member.epoch, failure)
        return request

    def _publish(self, encoded: list[tuple[Job[Work], EncodedTask]]) -> bool:
        """Send tasks (watched first, so no result is missed) and mark them in the ledger."""
        self._watcher.watch(job.task_id for job, _ in encoded)
        try:
            self._dispatcher.publish([task for _, task in encoded])
        except PublishError as exc:
            log.log(logging.DEBUG if exc.refused else logging.WARNING, "%s; will retry", exc)
            self._backoff_until = self._clock() + PUBLISH_BACKOFF
            return False
        for route, jobs in _by_route(job for job, _ in encoded):
            if isinstance(self._ledger, BatchMemberMarks):  # one call: tasks and batches' records
                values = {job.task_id: "1" for job in jobs}
                for job in jobs:
                    if job.members is not None:
                        values.update(member_markers(job))
                self._ledger.mark_members(values, marker_ttl(route))
            else:
                self._ledger.mark([job.task_id for job in jobs], marker_ttl(route))
        return True


def _ids_to_look_up(jobs: list[Job[Work]]) -> list[str]:
    """The jobs' task ids, and a batch's records' own ids (their markers name earlier
    batches, see bridge/batch_markers.py)."""
    ids = [job.task_id for job in jobs]
    ids.extend(member.task_id for job in jobs if job.members is not None for member in job.members)
    return ids


def marker_ttl(route: Route) -> float:
    """How long a dispatch marker lives: past every re-send the route allows."""
    return route.task_timeout * (route.max_redispatch + 2)


def _by_route(jobs: Iterable[Job[Work]]) -> list[tuple[Route, list[Job[Work]]]]:
    """Jobs per route: each route's markers live as long as its own timeouts need."""
    grouped: dict[int, tuple[Route, list[Job[Work]]]] = {}
    for job in jobs:
        route = job.item.route
        grouped.setdefault(id(route), (route, []))[1].append(job)
    return list(grouped.values())
