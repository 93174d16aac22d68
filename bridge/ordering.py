"""The ordering gate: which waiting records of a partition may start now.

Pure: it sees keys and counts, never Kafka or Celery. Modes, per route:

- ``unordered``: any record may run while others run;
- ``key``: records with the same key run one after another, in offset order; different keys
  in parallel. Records without a key count as one key (they keep their relative order);
- ``partition``: one record at a time per partition, in offset order.

The loop gives the gate its waiting records in offset order; the gate never lets a record
overtake an earlier waiting record with the same key, so offset order holds per key.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import TypeVar

TP = tuple[str, int]
W = TypeVar("W")


class OrderingGate:
    def __init__(self) -> None:
        self._busy_keys: dict[TP, Counter[bytes | None]] = {}
        self._running: Counter[TP] = Counter()

    def select(
        self,
        mode: str,
        tp: TP,
        waiting: deque[W],
        room: int,
        key_of: Callable[[W], bytes | None],
    ) -> list[W]:
        """Remove and return the waiting records that may start, at most ``room`` of them."""
        if room <= 0 or not waiting:
            return []
        if mode == "partition":
            return [waiting.popleft()] if not self._running[tp] else []
        if mode == "key":
            return self._select_by_key(tp, waiting, room, key_of)
        return [waiting.popleft() for _ in range(min(room, len(waiting)))]

    def _select_by_key(
        self, tp: TP, waiting: deque[W], room: int, key_of: Callable[[W], bytes | None]
    ) -> list[W]:
        busy = self._busy_keys.get(tp, Counter())
        blocked: set[bytes | None] = set()
        chosen: list[W] = []
        kept: deque[W] = deque()
        for item in waiting:
            key = key_of(item)
            if len(chosen) < room and not busy[key] and key not in blocked:
                chosen.append(item)
                blocked.add(key)  # the next record of this key waits for this one
            else:
                blocked.add(key)
                kept.append(item)
        waiting.clear()
        waiting.extend(kept)
        return chosen

    def started(self, tp: TP, key: bytes | None) -> None:
        self._running[tp] += 1
        self._busy_keys.setdefault(tp, Counter())[key] += 1

    def finished(self, tp: TP, key: bytes | None) -> None:
        if self._running[tp] > 0:
            self._running[tp] -= 1
        keys = self._busy_keys.get(tp)
        if keys is not None and keys[key] > 0:
            keys[key] -= 1
            if not keys[key]:
                del keys[key]

    def running(self, tp: TP) -> int:
        return self._running[tp]

    def busy(self, tp: TP, key: bytes | None) -> bool:
        keys = self._busy_keys.get(tp)
        return keys is not None and keys[key] > 0

    def forget(self, tp: TP) -> None:
        self._busy_keys.pop(tp, None)
        self._running.pop(tp, None)
