"""Machinery of the chaos scenarios: numbered records, a commit probe, bridges, the report.

A :class:`Scenario` creates a fresh topic and group, samples the group's committed offsets
from the start, produces numbered records in the background (learning each one's offset from
its delivery report), runs bridges, and at :meth:`Scenario.finish` waits for every record to
be committed, stops what still runs, gathers the evidence and checks the invariants
(:mod:`tests.chaos.invariants`). It prints one summary line per scenario.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from bench.common import produce_retrying
from bridge.stack import StackInfo
from tests.chaos.invariants import (
    OK,
    Bounds,
    DeadLetter,
    Evidence,
    Execution,
    Report,
    check,
)
from tests.figures import figure
from tests.integration.harness import (
    BridgeProcess,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)

#: librdkafka's own log lines (a flood of "connection refused" while Kafka is down) go here,
#: to pytest's log capture, instead of to stderr
QUIET = logging.getLogger("tests.chaos.librdkafka")


# == profiles ===========================================================================
@dataclass(frozen=True)
class Profile:
    """How big the suite runs: SHORT in CI (the default), FULL with ``CKB_CHAOS_PROFILE=full``."""

    name: str
    #: record counts are multiplied by this
    scale: int
    #: how often repeatable faults are applied (restarts, kills, storm events, outages)
    rounds: int
    #: consumer protocols the group scenarios run with
    protocols: tuple[str, ...]
    #: pytest-timeout per scenario, seconds
    timeout: int

    def records(self, short: int) -> int:
        return short * self.scale


PROFILES = {
    "short": Profile("short", scale=1, rounds=1, protocols=("cooperative-sticky",), timeout=300),
    "full": Profile(
        "full", scale=8, rounds=3, protocols=("cooperative-sticky", "consumer"), timeout=1800
    ),
}


def _active_profile() -> Profile:
    name = os.environ.get("CKB_CHAOS_PROFILE", "short").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"CKB_CHAOS_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


PROFILE = _active_profile()

#: librdkafka consumer settings per group protocol: short timeouts so a dead member is noticed
#: in seconds (the broker allows session timeouts down to 1 s classic, 6 s KIP-848)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cooperative-sticky": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    "consumer": {"group.protocol": "consumer"},
}


# == records ============================================================================
@dataclass(frozen=True)
class Planned:
    """One record to produce: its number, partition, bytes, and what it must end as."""

    n: int
    partition: int
    value: bytes | None
    expect: str = OK


def record_value(n: int, sleep_ms: int = 0, mode: str | None = None) -> bytes:
    payload: dict[str, Any] = {"n": n, "sleep_ms": sleep_ms}
    if mode is not None:
        payload["mode"] = mode
    return json.dumps(payload).encode()


def numbered(
    total: int, partitions: int, seed: int, sleep_ms: tuple[int, int] = (0, 20)
) -> list[Planned]:
    """``total`` records that succeed, round robin over partitions, seeded task durations."""
    rng = random.Random(seed)
    return [
        Planned(n, n % partitions, record_value(n, rng.randint(*sleep_ms))) for n in range(total)
    ]


class NumberedProducer:
    """Produces planned records at a steady rate in the background; learns every offset."""

    def __init__(self, bootstrap: str, topic: str, planned: list[Planned], rate: float | None):
        self._bootstrap = bootstrap
        self._topic = topic
        self._planned = planned
        self._rate = rate
        self.offsets: dict[int, tuple[int, int]] = {}  # n → (partition, offset)
        self.errors: list[str] = []
        #: wall time the last record was acknowledged
        self.finished_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self._bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 180_000,  # rides out a broker restart
                "logger": QUIET,
            }
        )
        started = time.monotonic()
        for index, record in enumerate(self._planned):
            if self._stop.is_set():
                break
            if self._rate:
                self._stop.wait(max(0.0, started + index / self._rate - time.monotonic()))
            self._produce(producer, record)
        producer.flush(180)
        self.finished_at = time.time()

    def _produce(self, producer: Producer, record: Planned) -> None:
        def delivered(err: Any, msg: Any, n: int = record.n) -> None:
            if err is None:
                self.offsets[n] = (msg.partition(), msg.offset())
            else:
                self.errors.append(f"record {n}: {err}")

        produce_retrying(  # bounded: a full local queue drains within seconds
            producer,
            self._topic,
            attempts=1000,
            value=record.value,
            partition=record.partition,
            on_delivery=delivered,
        )
        producer.poll(0)

    @property
    def delivered(self) -> int:
        return len(self.offsets)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"production did not finish in {timeout:.0f}s"
        assert not self.errors, f"produce failed: {self.errors[:3]}"
        assert self.delivered == len(self._planned), "not every record was delivered"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(200)

    def end_offsets(self, partitions: int) -> dict[int, int]:
        ends = dict.fromkeys(range(partitions), 0)
        for partition, offset in self.offsets.values():
            ends[partition] = max(ends[partition], offset + 1)
        return ends


# == the probe ==========================================================================
class CommitProbe:
    """Samples the group's committed offsets from one long-lived client (no group member)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.failed_reads = 0
        self._config = {"bootstrap.servers": bootstrap, "group.id": group, "logger": QUIET}
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            while not self._stop.wait(0.2):
                try:
                    committed = consumer.committed(self._tps, timeout=2)
                except KafkaException:  # broker down, coordinator moving: a gap in samples
                    self.failed_reads += 1
                    continue
                read_at = time.time()  # after the answer: every commit it shows came before
                if all(tp.error is None for tp in committed):
                    self.samples.append((read_at, {tp.partition: tp.offset for tp in committed}))
        finally:
            consumer.close()

    def latest(self) -> dict[int, int] | None:
        return self.samples[-1][1] if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# == bridges ============================================================================
class Fleet:
    """The bridges of one scenario, by name; what still runs is stopped at the end."""

    def __init__(self, config: dict[str, Any], work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.bridges: dict[str, BridgeProcess] = {}
        #: bridges stopped on purpose with SIGTERM → exit code (must be 0); killed ones: -9
        self.exit_codes: dict[str, int] = {}

    def start(self, wait: bool = True) -> BridgeProcess:
        name = f"bridge-{len(self.bridges) + 1}"
        bridge = start_bridge(self.config, self.work_dir, name)
        self.bridges[name] = bridge
        if wait:
            bridge.wait_assigned()
        return bridge

    def running(self) -> list[BridgeProcess]:
        return [b for b in self.bridges.values() if b.alive()]

    def name_of(self, bridge: BridgeProcess) -> str:
        return next(name for name, b in self.bridges.items() if b is bridge)

    def stop(self, bridge: BridgeProcess, timeout: float = 60) -> int:
        """SIGTERM (after SIGCONT, in case it was stopped); the exit code."""
        with suppress(ProcessLookupError):
            bridge.process.send_signal(signal.SIGCONT)
        try:
            code = bridge.terminate(timeout)
        except AssertionError:
            code = -999  # did not stop on SIGTERM within the timeout (killed)
        self.exit_codes[self.name_of(bridge)] = code
        return code

    def kill(self, bridge: BridgeProcess) -> None:
        bridge.kill()
        self.exit_codes[self.name_of(bridge)] = -9

    def stop_all(self) -> None:
        for name, bridge in self.bridges.items():
            if bridge.alive():
                self.stop(bridge)
            elif name not in self.exit_codes:  # died by itself: a crash is a violation
                self.exit_codes[name] = bridge.process.returncode

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {name}\n{b.log_tail(chars)}" for name, b in self.bridges.items())


# == scenarios ==========================================================================
@dataclass
class Scenario:
    """One scenario's topic, group, producer, probe and bridges, and its final check."""

    name: str
    stack: StackInfo
    kafka: Kafka
    work_dir: Path
    recorder: Executions
    planned: list[Planned]
    partitions: int
    route: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    topic: str = ""
    group: str = ""
    fault_ended_at: float | None = None

    def __post_init__(self) -> None:
        self.topic = self.kafka.create_topic(self.partitions, prefix="chaos")
        self.group = unique("g-chaos")
        route = {"topic": self.topic, "task": "it.record", **self.route}
        self.config = bridge_config(self.stack, self.group, [route], **self.settings)
        self.fleet = Fleet(self.config, self.work_dir)
        self.producer: NumberedProducer | None = None
        self.probe = CommitProbe(self.kafka.bootstrap, self.group, self.topic, self.partitions)
        #: scenario-specific facts, appended to the summary line
        self.notes: list[str] = []
        self._admin: AdminClient | None = None

    @property
    def dlq_topic(self) -> str:
        return str(self.route.get("dlq_topic") or f"{self.topic}.dlq")

    def start(self, bridges: int = 1, rate: float | None = None) -> None:
        self.probe.start()
        for _ in range(bridges):
            self.fleet.start()
        self.producer = NumberedProducer(self.kafka.bootstrap, self.topic, self.planned, rate)
        self.producer.start()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def wait_logged(
        self, text: str, times: int, timeout: float, bridge: BridgeProcess | None = None
    ) -> None:
        """Until ``bridge`` (or the scenario's bridges together) logged ``text`` ``times`` times."""
        bridges = [bridge] if bridge else list(self.fleet.bridges.values())

        def enough() -> bool:
            return sum(logged(b.log_path, text) for b in bridges) >= times

        wait_for(enough, timeout, f"{times}x {text!r} in the bridge logs", 0.2)

    def producer_done(self, timeout: float = 120) -> None:
        """Until every record was produced (before a fault that takes Kafka away)."""
        assert self.producer is not None, "start() the scenario first"
        self.producer.wait(timeout)

    def executed(self) -> int:
        """Record runs so far (a batch task's line counts each of its records)."""
        if self.route.get("batch"):
            return sum(len(run["payloads"]) for run in self.recorder.of(self.topic))
        return self.recorder.count(self.topic)

    def owners(self) -> list[set[int]] | None:
        """The partitions of the topic each member of the group owns, as the broker says;
        None while the group rebalances or the broker does not answer."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.kafka.bootstrap, "logger": QUIET})
        try:
            future = self._admin.describe_consumer_groups([self.group], request_timeout=5)
            group = future[self.group].result(10)
        except KafkaException:
            return None
        if group.state != ConsumerGroupState.STABLE:
            return None
        return [
            {tp.partition for tp in member.assignment.topic_partitions if tp.topic == self.topic}
            for member in group.members
        ]

    def wait_members(self, count: int, timeout: float = 60) -> None:
        """Until the group is stable with ``count`` members that own every partition."""

        def settled() -> bool:
            owners = self.owners()
            every = set(range(self.partitions))
            return owners is not None and len(owners) == count and set().union(*owners) == every

        wait_for(settled, timeout, f"a stable group of {count} owning every partition", 0.5)

    def wait_executed(self, fraction: float, timeout: float = 120) -> None:
        target = max(1, int(len(self.planned) * fraction))
        wait_for(lambda: self.executed() >= target, timeout, f"{target} executions", 0.05)

    def fault_over(self) -> None:
        self.fault_ended_at = time.time()

    # -- the end of a scenario ---------------------------------------------------------
    def finish(self, bounds: Bounds) -> Report:
        """Wait for every commit (I5), stop everything, check the invariants, print a line."""
        assert self.producer is not None, "start() the scenario first"
        self.producer.wait(timeout=240)
        ends = self.producer.end_offsets(self.partitions)
        # I5 counts from when the fault was over and the last record had been produced
        origin = max(self.fault_ended_at or 0.0, self.producer.finished_at)
        budget = bounds.recovery if bounds.recovery is not None else 180.0
        recovery = self._wait_committed(ends, origin, origin + budget)
        if self.fault_ended_at is None:
            recovery = None
        self.fleet.stop_all()
        settle(self.recorder, self.topic)
        self.probe.stop()
        evidence = Evidence(
            expected=self._expected(),
            numbers={coords: n for n, coords in self.producer.offsets.items()},
            executions=self._executions(),
            dead_letters=read_dead_letters(self.kafka, self.dlq_topic),
            samples=list(self.probe.samples),
            end_offsets=ends,
            recovery=recovery,
        )
        report = check(evidence, bounds)
        report.violations.extend(self._exit_code_violations())
        line = report.line(self.name) + "".join(f"; {note}" for note in self.notes)
        figure(line)
        save_report(self.name, report, self.notes)
        assert report.ok, f"{line}\n{self.fleet.logs()}"
        return report

    def _wait_committed(self, ends: dict[int, int], origin: float, deadline: float) -> float | None:
        """Seconds from ``origin`` to a sample showing every end offset committed."""
        while time.time() < deadline:
            for read_at, sample in reversed(self.probe.samples[-5:]):
                if sample == ends:  # 0: done before the fault was over
                    return max(0.0, read_at - origin)
            time.sleep(0.1)
        return None

    def _expected(self) -> dict[tuple[int, int], str]:
        assert self.producer is not None
        by_n = {p.n: p.expect for p in self.planned}
        return {coords: by_n[n] for n, coords in self.producer.offsets.items()}

    def _executions(self) -> list[Execution]:
        runs = []
        for run in self.recorder.of(self.topic):
            if "payloads" in run:  # a batch task (``it.batch``): one run of each member record
                runs.extend(self._batch_members(run))
                continue
            payload = run.get("payload")
            n = payload.get("n") if isinstance(payload, dict) else None
            runs.append(Execution(int(run["ckb_partition"]), int(run["ckb_offset"]), run["end"], n))
        return runs

    def _batch_members(self, run: dict[str, Any]) -> list[Execution]:
        """A batch's members, found by their record numbers."""
        assert self.producer is not None
        members = []
        for payload in run["payloads"]:
            n = int(payload["n"])
            partition, offset = self.producer.offsets[n]
            assert partition == int(run["ckb_partition"]), f"record {n} in another's batch"
            members.append(Execution(partition, offset, float(run["end"]), n))
        return members

    def _exit_code_violations(self) -> list[str]:
        bad = {name: code for name, code in self.fleet.exit_codes.items() if code not in (0, -9)}
        return [f"bridges did not exit 0 on SIGTERM: {bad}"] if bad else []

    def close(self) -> None:
        """Cleanup after a failure: nothing keeps running into the next scenario."""
        if self.producer is not None:
            self.producer.stop()
        self.fleet.stop_all()
        self.probe.stop()


#: ``run(name, planned, partitions, route=…, recorder=…, protocol=…, consumer=…)``: the
#: ``run`` fixture, a :class:`Scenario` with the suite's defaults, as a context manager
RunFactory = Callable[..., AbstractContextManager[Scenario]]


@contextmanager
def scenario(**kwargs: Any) -> Iterator[Scenario]:
    run = Scenario(**kwargs)
    try:
        yield run
    finally:
        run.close()


def logged(path: Path, text: str) -> int:
    """How often ``text`` occurs in the log file at ``path``."""
    return path.read_text(errors="replace").count(text)


def settle(recorder: Executions, topic: str, quiet: float = 1.5, timeout: float = 15) -> None:
    """Wait until no execution was recorded for ``quiet`` seconds (late duplicates count)."""
    deadline = time.monotonic() + timeout
    last, since = recorder.count(topic), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.25)
        count = recorder.count(topic)
        if count != last:
            last, since = count, time.monotonic()


def read_dead_letters(kafka: Kafka, topic: str) -> list[DeadLetter]:
    admin_view = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": unique("dlq-peek")})
    try:
        exists = topic in admin_view.list_topics(timeout=10).topics
    finally:
        admin_view.close()
    if not exists:
        return []
    expected = sum(kafka.end_offsets(topic).values())
    messages = kafka.read_all(topic, expected, timeout=60)
    assert len(messages) == expected, f"read {len(messages)} of {expected} dead letters"
    letters = []
    for message in messages:
        headers = {k: (v or b"").decode() for k, v in message.headers() or []}
        letters.append(
            DeadLetter(
                partition=int(headers["ckb.original.partition"]),
                offset=int(headers["ckb.original.offset"]),
                reason=headers["ckb.reason"],
                timestamp=message.timestamp()[1] / 1000.0,
            )
        )
    return letters


def save_report(name: str, report: Report, notes: list[str]) -> None:
    """Append the figures as a JSON line to ``$CKB_CHAOS_REPORT`` when it is set."""
    path = os.environ.get("CKB_CHAOS_REPORT")
    if not path:
        return
    line = {
        "scenario": name,
        "profile": PROFILE.name,
        "records": report.records,
        "executions": report.executions,
        "duplicates": report.duplicates,
        "duplicate_bound": report.bounds.duplicates,
        "dlq": report.dead_letters,
        "dlq_duplicates": report.dlq_duplicates,
        "spurious_dlq": report.spurious_dead_letters,
        "max_commit_lag_s": round(report.max_commit_lag, 2),
        "recovery_s": None if report.recovery is None else round(report.recovery, 1),
        "recovery_bound_s": report.bounds.recovery,
        "samples": report.samples,
        "violations": report.violations,
        "notes": notes,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


# == faults =============================================================================
def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_9(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def tasks_held(broker: redis.Redis, queue: str) -> int:
    """Tasks of ``queue`` waiting in Redis or reserved by a worker and not acked yet.

    kombu keeps a reserved message in the ``unacked`` hash as ``[message, exchange, routing
    key]`` until the (late) ack; entries of other queues (or of killed workers) are skipped.
    """
    reserved = sum(
        1
        for raw in broker.hvals("unacked")
        if (entry := json.loads(raw)) and len(entry) == 3 and entry[2] == queue
    )
    return int(broker.llen(queue)) + reserved


def held_task_ids(broker: redis.Redis, queue: str) -> set[str]:
    """Ids of the tasks :func:`tasks_held` counts: waiting in ``queue`` or reserved, not acked."""
    messages = [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]
    for raw in broker.hvals("unacked"):
        entry = json.loads(raw)
        if entry and len(entry) == 3 and entry[2] == queue:
            messages.append(entry[0])
    return {str(message["headers"]["id"]) for message in messages}


def unread_by_broker(kafka_port: int, pid: int) -> int:
    """Bytes process ``pid`` sent to the broker on ``kafka_port`` that the broker has not
    read yet: the receive queues of the broker's ends of ``pid``'s connections (loopback TCP,
    from /proc; a stopped broker reads nothing, so every request sent to it stays there)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    sockets = []  # (local port, remote port, receive queue bytes, inode)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                sockets.append((local, remote, int(fields[4].split(":")[1], 16), fields[9]))
    mine = {port for port, peer, _, inode in sockets if inode in inodes and peer == kafka_port}
    return sum(queued for port, peer, queued, _ in sockets if port == kafka_port and peer in mine)


def kill_bridge_watchers(admin: redis.Redis) -> int:
    """Drop only the bridges' result watcher connections: PSUBSCRIBE on db 1 (results).

    ``CLIENT KILL TYPE pubsub`` would drop the Celery workers' broadcast connections too.
    """
    ids = [
        str(client["id"])
        for client in admin.client_list(_type="pubsub")
        if int(client.get("psub", 0)) and int(client.get("db", -1)) == 1
    ]
    return sum(int(admin.client_kill_filter(_id=client_id)) for client_id in ids)


class SupervisedWorker:
    """A Celery worker started again whenever it exits, as systemd or Kubernetes would."""

    def __init__(
        self, start: Callable[[Path], Worker], queue: str, log_dir: Path, max_restarts: int = 5
    ) -> None:
        self.queue = queue
        self._start = start
        self._log_dir = log_dir
        self._max_restarts = max_restarts
        self.restarts = 0
        self.errors: list[str] = []
        self.worker = self._spawn()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> Worker:
        log_dir = self._log_dir / f"run-{self.restarts}"
        log_dir.mkdir(parents=True, exist_ok=True)
        return self._start(log_dir)

    def _watch(self) -> None:
        while not self._stop.wait(0.5) and self.restarts < self._max_restarts:
            if self.worker.process.poll() is None:
                continue
            self.restarts += 1
            try:
                self.worker = self._spawn()
            except Exception as exc:  # a thread must not raise; the scenario reports it
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        self.worker.stop()


# == a server the session shares, restarted under one bridge ============================
#: the settings of the scenarios that kill and restart a broker or result backend
RESTART_SETTINGS: dict[str, Any] = {
    "kafka": {"consumer": {}, "commit_interval": 0.5},
    "limits": {"revoke_grace": 10, "shutdown_grace": 20},
}


def supervised_worker(stack: StackInfo, prefix: str, log_dir: Path) -> SupervisedWorker:
    """A worker of ``stack`` on a queue of its own, started again if it exits."""
    queue = unique(prefix)
    return SupervisedWorker(
        lambda where: start_worker(stack, queue, where, concurrency=4), queue, log_dir
    )


def server_outage(
    sc: Scenario,
    log: Path,
    lines: tuple[str, str],
    server: tuple[Callable[[], None], Callable[[], None]],
    what: str,
    while_away: Callable[[], None] = lambda: None,
) -> int:
    """One round: stop a server (``server`` = stop, start) and keep it away until the bridge's
    ``log`` says it noticed (one more of ``lines[0]``), check ``while_away``, start it again
    (always: the session shares it), then wait until the log says it is back (``lines[1]``).
    Returns the outages the bridge logged in the round."""
    down, back = lines
    stop, start = server
    outages = logged(log, down)
    stop()
    try:
        wait_for(lambda: logged(log, down) > outages, 30, f"the bridge to notice {what} left")
        while_away()
    finally:
        start()
    sc.fault_over()
    wait_for(lambda: logged(log, back) >= logged(log, down), 60, f"the bridge to have {what} back")
    return logged(log, down) - outages
