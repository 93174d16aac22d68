"""Dispatch markers for the records of a batch task: which batch an earlier owner sent them in.

A batch's own marker (``ckb-dispatched-<batch id>``) only helps a new owner that forms the
same batch again. After a rebalance it often does not: the earlier owner may have sent a
partial batch at ``max_wait`` that the new owner, seeing more records at once, would make
longer, under another id, and run those records a second time. So each record of a batch
also gets a marker, under the record's own task id, whose value names the batch and its
records: ``batch:<batch task id>:<offset>,<offset>,...``. A new owner that finds such a marker
among the records it is about to send makes the engine form that batch again, exactly, and
watches the task already sent (see :mod:`bridge.core.batches`).

Ledgers that can keep a value with a marker (Redis) implement :class:`BatchMemberMarks`; with
the others a batch re-formed after a rebalance may run its records again (at least once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from bridge.core.jobs import Job

PREFIX = "batch:"


@runtime_checkable
class BatchMemberMarks(Protocol):
    """A ledger that keeps a value with each marker and reads it back (``Known.batch_of``)."""

    def mark_members(self, values: Mapping[str, str], ttl: float) -> None:
        """Markers for these record task ids, each with its value, living ``ttl`` seconds."""
        ...


def member_markers(batch: Job[Any]) -> dict[str, str]:
    """The marker value of each record of ``batch``, by the record's own task id."""
    members = batch.parts()
    value = f"{PREFIX}{batch.task_id}:{','.join(str(job.offset) for job in members)}"
    return {job.task_id: value for job in members}


def parse(value: str) -> tuple[str, frozenset[int]] | None:
    """The batch task id and record offsets a marker value names; None: not a batch's."""
    if not value.startswith(PREFIX):
        return None
    task_id, _, offsets = value[len(PREFIX) :].rpartition(":")
    try:
        found = frozenset(int(part) for part in offsets.split(","))
    except ValueError:
        return None
    return (task_id, found) if task_id else None


def earlier_batches(
    batch: Job[Any], batch_of: Mapping[str, str]
) -> list[tuple[str, frozenset[int]]]:
    """The batches an earlier owner sent records of ``batch`` in (its own id excluded)."""
    found: dict[str, frozenset[int]] = {}
    for job in batch.parts():
        value = batch_of.get(job.task_id)
        parsed = None if value is None else parse(value)
        if parsed is not None and parsed[0] != batch.task_id:
            found[parsed[0]] = parsed[1]
    return sorted(found.items(), key=lambda item: min(item[1], default=-1))
