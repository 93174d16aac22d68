"""``python -m bench.cpu_profiled_bridge OUT ARGS…``: ``ckb ARGS…`` under cProfile, CPU clock.

``python -m cProfile -m bridge run`` measures wall time of the main thread only, so the
consumer loop's waits inside ``Consumer.consume`` (for records, or while partitions are paused)
dwarf what costs CPU, and the result watcher's thread is not seen at all. This wrapper runs the
same ``ckb`` entry point with every thread under its own cProfile on that thread's CPU clock
(``time.thread_time``): the main thread (the consumer loop) is written to ``OUT`` and each
other thread to ``OUT.<thread name>``, when the bridge returns (SIGTERM stops it gracefully)
or the thread ends.
"""

from __future__ import annotations

import cProfile
import sys
import threading
import time
from typing import Any


def _profile_threads(out: str) -> None:
    """Run every thread started from now on under its own CPU-clock profiler."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        try:
            original(self)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{out}.{self.name}")

    threading.Thread.run = run  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    out, *args = argv
    from bridge.cli import main as ckb

    _profile_threads(out)
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    code: Any = 0
    try:
        ckb(args, prog_name="ckb")
    except SystemExit as stop:
        code = stop.code
    finally:
        profiler.disable()
        profiler.dump_stats(out)
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
