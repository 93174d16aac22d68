"""The task message of a batch (``routes[].batch``): one call for consecutive records.

The argument is the list of what ``call`` passes for each record (``arg``: the payloads,
``envelope``: the envelopes). Headers give the batch's coordinates: ``ckb_topic``,
``ckb_partition``, ``ckb_batch_first_offset``, ``ckb_batch_last_offset``, ``ckb_batch_size``.
A record whose value does not decode leaves the batch (it is dead-lettered alone); the batch
keeps its id.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.core.jobs import Job
from bridge.dispatcher import TaskRequest
from bridge.intake import Work
from bridge.payloads import HEADER_PARTITION, HEADER_TOPIC, build_call
from bridge.settings import Settings
from bridge.task_ids import batch_task_id
from bridge.tracing import message_headers

HEADER_BATCH_FIRST = "ckb_batch_first_offset"
HEADER_BATCH_LAST = "ckb_batch_last_offset"
HEADER_BATCH_SIZE = "ckb_batch_size"


def batch_id_for(settings: Settings) -> Callable[[list[Job[Work]]], str]:
    """The engine's ``batch_id``: a batch's task id from its first and last records."""

    def batch_id(members: list[Job[Work]]) -> str:
        first, last = members[0].item.record, members[-1].item.record
        return batch_task_id(
            settings.kafka.group_id,
            first.topic,
            first.partition,
            (first.offset, first.timestamp_ms),
            (last.offset, last.timestamp_ms),
            settings.dedupe_generation,
        )

    return batch_id


def batch_request(job: Job[Work]) -> tuple[TaskRequest | None, list[tuple[Job[Work], Exception]]]:
    """The batch's task message and the members that cannot be part of it (with why); the
    message is None when no member is left."""
    route = job.item.route
    calls, kept, rejected = [], [], []
    for member in job.parts():
        try:
            args, _ = build_call(route, member.item.record)
        except Exception as exc:  # a DecodeError, or a limit of ours: this record's alone
            rejected.append((member, exc))
            continue
        calls.append(args[0])
        kept.append(member)
    if not kept:
        return None, rejected
    job.members = kept
    first, last = kept[0].item.record, kept[-1].item.record
    headers = {
        HEADER_TOPIC: first.topic,
        HEADER_PARTITION: first.partition,
        HEADER_BATCH_FIRST: first.offset,
        HEADER_BATCH_LAST: last.offset,
        HEADER_BATCH_SIZE: len(kept),
        # tracing on: a publish span, child of the first record's consumer span
        **message_headers(first, job.task_id, route),
    }
    request = TaskRequest(
        task_id=job.task_id,
        name=route.task,
        args=[calls],
        kwargs={},
        queue=route.queue,
        headers=headers,
        label=f"<kafka batch {first.coordinates()}..{last.offset} ({len(kept)} records)>",
        retries=job.retries_seen,
    )
    return request, rejected
