"""Batches: consecutive records of one partition sent as ONE task (``routes[].batch``).

A partition's waiting jobs become a batch once it is full (``max_records`` records or
``max_bytes`` of record bytes) or its oldest record has waited ``max_wait`` seconds. Ordering
per route still holds, batch by batch: ``partition`` sends one batch at a time; ``key`` never
lets two running batches hold records of one key (a batch may hold several records of a key,
in offset order); ``unordered`` sends as many batches as there is room for.

After a rebalance the new owner may see records that an earlier owner already sent in a batch
whose boundaries it cannot know (a partial batch sent at ``max_wait``, say). The caller learns
them from the dispatch markers and makes the engine *remember* them: a remembered batch is
formed again exactly, under its task id, before any new batch of the partition, so the caller
watches the task already sent instead of sending its records a second time in another batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.core.jobs import Job, T
from bridge.core.ordering import PartitionGate
from bridge.core.partition import PartitionWork
from bridge.core.policy import BatchPolicy
from bridge.core.vocabulary import Ordering


def _full(policy: BatchPolicy, waiting: deque[Job[Any]], size_of: Callable[[int], int]) -> bool:
    """Enough waiting for a whole batch (``max_records``, or ``max_bytes`` of records)."""
    if len(waiting) >= policy.max_records:
        return True
    return sum(size_of(job.offset) for job in waiting) >= policy.max_bytes


def take_batches(
    mode: Ordering,
    gate: PartitionGate,
    waiting: deque[Job[Any]],
    room: int,
    policy: BatchPolicy,
    size_of: Callable[[int], int],
    waited: bool,
) -> list[list[Job[Any]]]:
    """Remove and return up to ``room`` batches of waiting jobs (each one task): whole ones,
    and a partial one once the oldest record ``waited`` ``max_wait``."""
    if room <= 0 or not waiting or not (waited or _full(policy, waiting, size_of)):
        return []
    if mode is Ordering.PARTITION:
        return [] if gate.running else [_head(waiting, policy, size_of)]
    if mode is Ordering.KEY:
        batch = _by_key(gate, waiting, policy, size_of)
        return [batch] if batch else []
    batches: list[list[Job[Any]]] = []
    while waiting and len(batches) < room and (waited or _full(policy, waiting, size_of)):
        batches.append(_head(waiting, policy, size_of))
    return batches


def _head(
    waiting: deque[Job[Any]], policy: BatchPolicy, size_of: Callable[[int], int]
) -> list[Job[Any]]:
    batch: list[Job[Any]] = []
    size = 0
    while waiting and len(batch) < policy.max_records:
        size += size_of(waiting[0].offset)
        if batch and size > policy.max_bytes:
            break
        batch.append(waiting.popleft())
    return batch


def _by_key(
    gate: PartitionGate,
    waiting: deque[Job[Any]],
    policy: BatchPolicy,
    size_of: Callable[[int], int],
) -> list[Job[Any]]:
    """One batch of the waiting jobs whose keys no running batch holds, in offset order; a job
    left behind blocks the later jobs of its key (they never overtake it)."""
    batch: list[Job[Any]] = []
    kept: deque[Job[Any]] = deque()
    blocked: set[bytes | None] = set()
    size = 0
    for job in waiting:
        fits = len(batch) < policy.max_records and (
            not batch or size + size_of(job.offset) <= policy.max_bytes
        )
        if fits and not gate.busy[job.key] and job.key not in blocked:
            batch.append(job)
            size += size_of(job.offset)
        else:
            kept.append(job)
            blocked.add(job.key)
    waiting.clear()
    waiting.extend(kept)
    return batch


def select_batches(
    part: PartitionWork[T], room: int, now: float, batch_id: Callable[[list[Job[T]]], str]
) -> list[Job[T]]:
    """The batch jobs ``part`` may send now; none while a partial batch is not due yet."""
    policy = part.policy
    assert policy is not None and policy.batch is not None
    if part.remembered:
        again = _remembered(part, room, policy.ordering)
        if again or part.remembered:
            return again
    oldest = part.offsets.open.get(part.waiting[0].offset, now)
    waited = now - oldest >= policy.batch.max_wait
    if not (waited or _full(policy.batch, part.waiting, part.size_of)):
        return []
    batches = take_batches(
        policy.ordering, part.gate, part.waiting, room, policy.batch, part.size_of, waited
    )
    return [_batch_job(members, batch_id(members)) for members in batches]


def _batch_job(members: list[Job[T]], task_id: str) -> Job[T]:
    first = members[0]
    return Job(first.tp, first.offset, None, first.epoch, task_id, first.item, members=members)


def _remembered(part: PartitionWork[T], room: int, mode: Ordering) -> list[Job[T]]:
    """The earliest remembered batch once all its records still open are waiting (its
    members are never sent in another batch meanwhile); nothing new goes before it."""
    while part.remembered:
        task_id, offsets = part.remembered[0]
        seen = part.offsets.next_offset or 0  # offsets from here on are not consumed yet
        still_open = {o for o in offsets if o >= seen or o in part.offsets.open}
        if not still_open:  # its records all ended meanwhile (dead-lettered on intake)
            part.remembered.pop(0)
            continue
        members = [job for job in part.waiting if job.offset in still_open]
        if len(members) < len(still_open):
            return []  # the rest is not consumed yet: wait for it
        if room <= 0 or (mode is not Ordering.UNORDERED and not _free(part.gate, members, mode)):
            return []
        part.remembered.pop(0)
        taken = {id(job) for job in members}
        kept = [job for job in part.waiting if id(job) not in taken]
        part.waiting.clear()
        part.waiting.extend(kept)
        return [_batch_job(members, task_id)]
    return []


def _free(gate: PartitionGate, members: list[Job[Any]], mode: Ordering) -> bool:
    """Whether the ordering lets a batch of ``members`` start now."""
    if mode is Ordering.PARTITION:
        return not gate.running
    return not any(gate.busy[job.key] for job in members)
