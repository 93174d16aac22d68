"""Everything a benchmark run shares: the stack, the workers, the Redis probe, the topic."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

from bench.env import Stack, Workers, create_topic, produce, unique
from bench.options import Options
from bench.phases import QUEUE_E, QUEUE_R, Context
from bench.redisstats import RedisProbe


@dataclass
class Session:
    options: Options
    console: Console
    stack: Stack
    workers: Workers
    probe: RedisProbe

    def context(self, topic: str, records: int) -> Context:
        o = self.options
        return Context(
            stack=self.stack,
            workers=self.workers,
            probe=self.probe,
            topic=topic,
            partitions=o.partitions,
            records=records,
            window=o.window,
            commit_interval=o.commit_interval,
            latency_records=o.latency_records,
            latency_rate=o.latency_rate,
            timeout=o.timeout,
        )

    def topic_with(self, records: int, prefix: str = "bench") -> str:
        """A new topic holding ``records`` records (produced now, all at once)."""
        topic = unique(prefix)
        create_topic(self.stack.bootstrap, topic, self.options.partitions)
        with self.console.status(f"producing {records:,} records to {topic}"):
            produce(self.stack.bootstrap, topic, records, track=False)
        return topic


@contextmanager
def session(options: Options, console: Console) -> Iterator[Session]:
    """Start the stack and the workers; stop both (and remove the work dir) at the end."""
    with console.status("starting Kafka and Redis (free ports, temp state dir)") as status:
        stack = Stack.start(options.work_dir, progress=lambda line: status.update(line))
    workers: Workers | None = None
    probe: RedisProbe | None = None
    try:
        with console.status(f"starting {options.workers} celery worker(s)"):
            workers = Workers.start(
                stack,
                options.workers,
                options.concurrency,
                options.pool,
                [QUEUE_R, QUEUE_E],
                options.prefetch,
            )
        probe = RedisProbe(stack.broker_url, stack.result_url)
        console.print(
            f"stack: Kafka {stack.bootstrap}, Redis {stack.info.redis_url}; "
            f"{options.workers}x{options.concurrency} {options.pool} workers; logs in "
            f"{stack.work_dir}"
        )
        yield Session(options, console, stack, workers, probe)
    finally:
        if probe is not None:
            probe.close()
        if workers is not None:
            workers.stop()
        stack.stop()
        if not options.keep and options.work_dir is None:
            shutil.rmtree(stack.work_dir, ignore_errors=True)
