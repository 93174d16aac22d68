"""Deterministic Celery task ids: one record, one id, across restarts and instances.

The id hashes group, topic, partition, offset and the record's timestamp, so a topic that is
deleted and recreated (offsets start again at 0, timestamps differ) never collides with old
results. ``dedupe_generation`` lets an operator reprocess on purpose after an offset reset.
"""

from __future__ import annotations

import uuid

#: fixed namespace for uuid5; changing it would change every task id
TASK_ID_NAMESPACE = uuid.UUID("6f1c3f0e-6d1a-5b7e-9a55-6b3a1c2d4e5f")


def task_id_for(
    group: str, topic: str, partition: int, offset: int, timestamp_ms: int, generation: int = 0
) -> str:
    name = f"{group}\x1f{topic}\x1f{partition}\x1f{offset}\x1f{timestamp_ms}\x1f{generation}"
    return str(uuid.uuid5(TASK_ID_NAMESPACE, name))


def batch_task_id(
    group: str,
    topic: str,
    partition: int,
    first: tuple[int, int],
    last: tuple[int, int],
    generation: int = 0,
) -> str:
    """The id of a batch task: its first and last records' (offset, timestamp ms). The same
    records batched the same way after a restart get the same id (and are not run again)."""
    name = (
        f"batch\x1f{group}\x1f{topic}\x1f{partition}\x1f{first[0]}\x1f{first[1]}"
        f"\x1f{last[0]}\x1f{last[1]}\x1f{generation}"
    )
    return str(uuid.uuid5(TASK_ID_NAMESPACE, name))
