"""``ckb dlq replay``: selection, header stripping, ``--since``, counting, commit points."""

from __future__ import annotations

import io
import types
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from rich.console import Console

from bridge.cli import main
from bridge.core.vocabulary import Reason
from bridge.dead_letters import Failure, dlq_headers
from bridge.records import Record
from bridge.replay import (
    DEFAULT_MAX_REPLAYS,
    DeadLetter,
    GroupOffsets,
    PartitionPlan,
    Refusal,
    Replayer,
    ReplayError,
    ReplayOptions,
    ReplayResult,
    ReplayStats,
    Selection,
    Trust,
    Verdict,
    default_group,
    header_text,
    listing_row,
    outcome_of,
    parse_since,
    plan_partition,
    render_summary,
    replay_admin_config,
    replay_consumer_config,
    replay_producer_config,
    strip_ckb_headers,
    target_partition,
    trust_for,
)
from bridge.replay import commits as replay_commits
from bridge.replay import plan as replay_plan
from bridge.settings import KafkaSettings, Route, Settings

NOW = datetime(2024, 5, 6, 12, 0, 0, tzinfo=UTC)
OWN_HEADERS: tuple[tuple[str, bytes | None], ...] = (
    ("trace-id", b"\x00\xffbin"),
    ("empty", b""),
    ("none", None),
    ("trace-id", b"second"),
    ("ckbnot", b"kept: no dot"),
    ("CKB.upper", b"kept: case matters"),
)


def original(
    offset: int = 7, value: bytes | None = b'{"secret": 1}', key: bytes = b"key-1"
) -> Record:
    return Record("orders", 2, offset, key, value, OWN_HEADERS, 1_700_000_000_000)


def dead_letter(
    reason: str = "task_failed",
    failed_at: datetime = NOW,
    source: Record | None = None,
    dlq_offset: int = 0,
) -> DeadLetter:
    """A letter exactly as the bridge's DLQ writer would have written it."""
    source = source or original()
    failure = Failure(reason, "tasks.x", "id-1", 3, "PlannedFailure", "boom", "tb")
    headers = tuple(dlq_headers(source, failure, "bridge-group", failed_at))
    letter = Record("orders.dlq", 0, dlq_offset, source.key, source.value, headers, 1)
    return DeadLetter.from_record(letter)


def foreign(offset: int = 0) -> DeadLetter:
    """A record on the DLQ topic that the bridge did not write (no ckb.* headers)."""
    return DeadLetter.from_record(Record("orders.dlq", 0, offset, None, b"x", (), 1))


# -- --since --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 90M ", NOW - timedelta(minutes=90)),
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # no zone: UTC
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_since_accepts_iso_and_ages(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-2h", "1y", "2024-13-01", "h"])
def test_since_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_since(text, NOW)


# -- headers --------------------------------------------------------------------------------


def test_strip_keeps_own_headers_byte_for_byte_in_order() -> None:
    letter = dead_letter()
    assert any(name.startswith("ckb.") for name, _ in letter.record.headers)
    assert strip_ckb_headers(letter.record.headers) == list(OWN_HEADERS)


def test_strip_removes_every_ckb_header_even_unknown_ones() -> None:
    headers = [("ckb.future.thing", b"1"), ("a", b"2"), ("ckb.reason", None)]
    assert strip_ckb_headers(headers) == [("a", b"2")]


def test_header_text_takes_the_last_value_and_ignores_none() -> None:
    headers = [("h", b"first"), ("h", None), ("h", b"last\xff")]
    assert header_text(headers, "h") == "last\ufffd"
    assert header_text(headers, "missing") is None


def test_dead_letter_parses_the_writer_headers() -> None:
    letter = dead_letter("task_timeout", NOW)
    assert letter.reason == "task_timeout"
    assert letter.original_topic == "orders"
    assert letter.original_partition == 2
    assert letter.original_offset == 7
    assert letter.failed_at == NOW
    assert letter.error_class == "PlannedFailure"
    assert letter.origin() == "orders[2]@7"


def test_dead_letter_tolerates_missing_and_garbled_headers() -> None:
    headers = (
        ("ckb.original.topic", b"orders"),
        ("ckb.original.partition", b"two"),
        ("ckb.failed.at", b"not a time"),
    )
    letter = DeadLetter.from_record(Record("d", 0, 0, None, None, headers, 0))
    assert letter.original_partition is None
    assert letter.failed_at is None
    assert letter.reason is None
    assert letter.origin() == "orders[?]@?"
    assert foreign().origin() == "-"


def test_listing_row_never_holds_the_payload_or_key() -> None:
    row = listing_row(dead_letter(source=original(value=b"card=4111")))
    assert row == (
        "orders.dlq[0]@0",
        "task_failed",
        "orders[2]@7",
        "2024-05-06 12:00:00Z",
        "PlannedFailure",
    )
    assert not any("4111" in cell or "key-1" in cell for cell in row)


# -- selection ------------------------------------------------------------------------------


def test_everything_is_replayed_without_filters() -> None:
    for reason in Reason:
        assert Selection().verdict(dead_letter(reason)) is Verdict.REPLAY


def test_reason_filter() -> None:
    selection = Selection(reasons=frozenset({"decode_error", "no_route"}))
    assert selection.verdict(dead_letter("decode_error")) is Verdict.REPLAY
    assert selection.verdict(dead_letter("no_route")) is Verdict.REPLAY
    assert selection.verdict(dead_letter("task_failed")) is Verdict.FILTERED


def test_since_filter_compares_failed_at_inclusively() -> None:
    selection = Selection(since=NOW)
    assert selection.verdict(dead_letter(failed_at=NOW)) is Verdict.REPLAY
    assert selection.verdict(dead_letter(failed_at=NOW + timedelta(hours=1))) is Verdict.REPLAY
    later = dead_letter(failed_at=NOW - timedelta(milliseconds=1))
    assert selection.verdict(later) is Verdict.FILTERED
    other_zone = dead_letter(failed_at=NOW.astimezone(timezone(timedelta(hours=5))))
    assert selection.verdict(other_zone) is Verdict.REPLAY


def test_since_filters_out_a_letter_without_failed_at() -> None:
    headers = (("ckb.original.topic", b"orders"), ("ckb.reason", b"task_failed"))
    letter = DeadLetter.from_record(Record("d", 0, 0, None, None, headers, 0))
    assert Selection(since=NOW).verdict(letter) is Verdict.FILTERED
    assert Selection().verdict(letter) is Verdict.REPLAY


def test_a_record_without_original_topic_is_skipped_unless_to_is_given() -> None:
    assert Selection().verdict(foreign()) is Verdict.SKIPPED
    # skipping wins over filters: it could not be replayed in any case
    assert Selection(reasons=frozenset({"task_failed"})).verdict(foreign()) is Verdict.SKIPPED
    to = Selection(to_topic="elsewhere")
    assert to.verdict(foreign()) is Verdict.REPLAY
    assert to.destination(foreign()) == "elsewhere"
    assert to.destination(dead_letter()) == "elsewhere"
    assert Selection().destination(dead_letter()) == "orders"


def test_target_partition_keeps_the_original_one_on_the_original_topic() -> None:
    letter = dead_letter()  # orders[2]
    assert target_partition(letter, "orders", partitions=3) == 2
    assert target_partition(letter, "orders", partitions=2) is None  # shrunk? let it hash
    assert target_partition(letter, "elsewhere", partitions=8) is None
    headers = (("ckb.original.topic", b"orders"),)
    no_partition = DeadLetter.from_record(Record("d", 0, 0, None, None, headers, 0))
    assert target_partition(no_partition, "orders", partitions=3) is None


# -- plan and counting ----------------------------------------------------------------------


def test_plan_starts_at_the_committed_offset_or_the_beginning() -> None:
    assert plan_partition(0, -1001, 0, 10) == PartitionPlan(0, 0, 10, None)
    assert plan_partition(1, 4, 0, 10) == PartitionPlan(1, 4, 10, 4)
    assert plan_partition(2, 3, 5, 10).start == 5  # deleted by retention
    assert plan_partition(3, 10, 0, 10).pending == 0
    assert plan_partition(4, -1001, 7, 7).pending == 0
    assert plan_partition(5, 12, 0, 10).pending == 0


def test_stats_count_per_reason_and_outcome() -> None:
    stats = ReplayStats()
    for _ in range(3):
        stats.count("task_failed", "replayed")
    stats.count("decode_error", "filtered")
    stats.count(None, "skipped")
    stats.count("task_failed", "failed")
    assert stats.examined == 6
    assert stats.replayed == 3
    assert stats.by_reason["task_failed"] == {"replayed": 3, "failed": 1}
    assert stats.by_reason["(none)"] == {"skipped": 1}
    assert stats.summary_line() == ("examined 6, replayed 3, filtered out 1, skipped 1, failed 1")
    with pytest.raises(ValueError, match="outcome"):
        stats.count("task_failed", "vanished")


def test_summary_line_of_a_dry_run_and_of_nothing() -> None:
    stats = ReplayStats()
    assert stats.summary_line() == "examined 0, replayed 0, filtered out 0, skipped 0"
    stats.count("no_route", outcome_of(Verdict.REPLAY))
    stats.count("no_route", outcome_of(Verdict.FILTERED))
    stats.count("no_route", outcome_of(Verdict.SKIPPED))
    assert stats.summary_line(dry_run=True) == (
        "examined 3, would replay 1, filtered out 1, skipped 1"
    )


def test_default_group() -> None:
    assert default_group("orders.dlq") == "ckb-replay.orders.dlq"


# -- client configuration -------------------------------------------------------------------

SECURITY: dict[str, str | int | float | bool] = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "bridge",
    "sasl.password": "pw",
}


def test_consumer_config_uses_the_replay_group_and_the_bridge_security() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b:9092",
        group_id="bridge-group",
        consumer={**SECURITY, "auto.offset.reset": "latest", "group.instance.id": "bridge-1"},
    )
    config = replay_consumer_config(kafka, "ckb-replay.orders.dlq")
    assert config["group.id"] == "ckb-replay.orders.dlq"
    assert config["bootstrap.servers"] == "b:9092"
    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.auto.commit"] is False
    assert config["enable.partition.eof"] is True
    assert config["client.id"].startswith("ckb-replay-")
    assert "group.instance.id" not in config
    for name, value in SECURITY.items():
        assert config[name] == value


def test_producer_config_is_idempotent_with_acks_all_and_inherits_security() -> None:
    kafka = KafkaSettings(
        consumer=SECURITY, producer={"acks": "1", "enable.idempotence": False, "linger.ms": 50}
    )
    config = replay_producer_config(kafka)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["linger.ms"] == 50
    assert config["client.id"].startswith("ckb-replay-")
    for name, value in SECURITY.items():
        assert config[name] == value


def test_admin_config_carries_address_and_security_only() -> None:
    kafka = KafkaSettings(bootstrap_servers="b:9092", consumer={**SECURITY, "fetch.min.bytes": 9})
    config = replay_admin_config(kafka)
    assert config == {
        "bootstrap.servers": "b:9092",
        "client.id": config["client.id"],
        **SECURITY,
    }
    assert config["client.id"].startswith("ckb-replay-")


def test_user_client_ids_are_kept() -> None:
    kafka = KafkaSettings(consumer={"client.id": "c"}, producer={"client.id": "p"})
    assert replay_consumer_config(kafka, "g")["client.id"] == "c"
    assert replay_producer_config(kafka)["client.id"] == "p"


# -- commit points, with stand-ins for the Kafka clients -------------------------------------


class FakeMessage:
    def __init__(self, letter: DeadLetter) -> None:
        self._record = letter.record

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._record.topic

    def partition(self) -> int:
        return self._record.partition

    def offset(self) -> int:
        return self._record.offset

    def key(self) -> bytes | None:
        return self._record.key

    def value(self) -> bytes | None:
        return self._record.value

    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._record.headers)

    def timestamp(self) -> tuple[int, int]:
        return (1, self._record.timestamp_ms)


class FakeConsumer:
    def __init__(self, letters: list[DeadLetter], missing: frozenset[str] = frozenset()) -> None:
        self._batches = [[FakeMessage(letter) for letter in letters]]
        self._missing = missing
        self.assigned: list[Any] = []

    def assign(self, tps: list[Any]) -> None:
        self.assigned = tps

    def consume(self, _n: int, _timeout: float) -> list[FakeMessage]:
        return self._batches.pop(0) if self._batches else []

    def pause(self, _tps: list[Any]) -> None:
        pass

    def list_topics(self, topic: str, timeout: float) -> Any:
        error = "UNKNOWN_TOPIC_OR_PART" if topic in self._missing else None
        info = types.SimpleNamespace(error=error, partitions={0: None, 1: None, 2: None})
        return types.SimpleNamespace(topics={topic: info})


Report = tuple[bytes, Callable[[Any, Any], None]]


class FakeProducer:
    """Holds delivery reports until flush, then serves them in the order ``order`` picks;
    records whose key is in ``fail_keys`` fail."""

    def __init__(
        self,
        fail_keys: frozenset[bytes] = frozenset(),
        order: Callable[[list[Report]], list[Report]] = list,
    ) -> None:
        self.produced: list[dict[str, Any]] = []
        self._reports: list[Report] = []
        self._fail = fail_keys
        self._order = order

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        self._reports.append((kwargs["key"], kwargs["on_delivery"]))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        for key, callback in self._order(self._reports):
            callback("timed out" if key in self._fail else None, None)
        self._reports = []
        return 0


def letters(count: int, filtered_every: int = 0) -> list[DeadLetter]:
    result = []
    for i in range(count):
        reason = "decode_error" if filtered_every and i % filtered_every == 0 else "task_failed"
        source = original(offset=100 + i, key=f"k{i}".encode())
        result.append(dead_letter(reason, source=source, dlq_offset=i))
    return result


class FakeCommits:
    """Stands in for :class:`GroupOffsets`; ``error`` makes every commit fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.commits: list[dict[int, int]] = []
        self._error = error

    def __call__(self, points: dict[tuple[str, int], int]) -> None:
        if self._error is not None:
            raise self._error
        self.commits.append({p: offset for (_topic, p), offset in points.items()})


def run_replayer(
    batch: list[DeadLetter],
    producer: FakeProducer | None,
    selection: Selection | None = None,
    limit: int | None = None,
    missing: frozenset[str] = frozenset(),
    commits: FakeCommits | None = None,
) -> tuple[FakeCommits, Replayer]:
    commits = commits or FakeCommits()
    dry_run = producer is None
    options = ReplayOptions("orders.dlq", "g", selection or Selection(), limit, dry_run)
    plan = PartitionPlan(0, 0, len(batch), None)
    consumer = FakeConsumer(batch, missing)
    replayer = Replayer(consumer, producer, options, [plan], None if dry_run else commits)
    replayer.run(lambda *_: None)
    return commits, replayer


def test_commits_up_to_the_first_undelivered_letter_whatever_the_report_order() -> None:
    producer = FakeProducer(frozenset({b"k3"}), order=lambda reports: list(reversed(reports)))
    commits, replayer = run_replayer(letters(6), producer)
    assert commits.commits == [{0: 3}]  # 4 and 5 were delivered, but 3 was not
    assert replayer.result.stats.summary_line() == (
        "examined 6, replayed 5, filtered out 0, skipped 0, failed 1"
    )
    assert replayer.result.error is not None
    assert "orders.dlq[0]@3" in replayer.result.error
    assert "secret" not in replayer.result.error


def test_produces_key_value_and_own_headers_to_the_original_partition() -> None:
    producer = FakeProducer()
    commits, replayer = run_replayer([dead_letter()], producer)
    assert producer.produced == [
        {
            "topic": "orders",
            "key": b"key-1",
            "value": b'{"secret": 1}',
            "headers": [*OWN_HEADERS, ("ckb.replay.count", b"1")],
            "on_delivery": producer.produced[0]["on_delivery"],
            "partition": 2,
        }
    ]
    assert commits.commits == [{0: 1}]
    assert replayer.result.error is None


def test_filtered_letters_are_committed_past_and_not_produced() -> None:
    producer = FakeProducer()
    batch = letters(6, filtered_every=2)  # 0, 2, 4 are decode_error
    selection = Selection(reasons=frozenset({"task_failed"}))
    commits, replayer = run_replayer(batch, producer, selection)
    assert len(producer.produced) == 3
    assert commits.commits == [{0: 6}]
    assert replayer.result.stats.by_reason["decode_error"] == {"filtered": 3}


def test_limit_stops_after_n_and_commits_only_what_was_examined() -> None:
    producer = FakeProducer()
    commits, replayer = run_replayer(letters(6), producer, limit=2)
    assert len(producer.produced) == 2
    assert commits.commits == [{0: 2}]
    assert replayer.result.stats.examined == 2


def test_a_missing_destination_stops_the_replay_before_that_letter() -> None:
    batch = [dead_letter("task_failed", source=original(key=b"k0"), dlq_offset=0)]
    lost = Record("gone", 0, 5, b"k1", b"v", (), 1)
    batch.append(dead_letter(source=lost, dlq_offset=1))
    batch.append(dead_letter(source=original(key=b"k2"), dlq_offset=2))
    producer = FakeProducer()
    commits, replayer = run_replayer(batch, producer, missing=frozenset({"gone"}))
    assert [p["key"] for p in producer.produced] == [b"k0"]
    assert commits.commits == [{0: 1}]
    assert replayer.result.error is not None
    assert "destination topic 'gone' does not exist" in replayer.result.error


def test_a_commit_kafka_refuses_is_an_error() -> None:
    refused = FakeCommits(ReplayError("no answer from Kafka within 30s"))
    _, replayer = run_replayer(letters(3), FakeProducer(), commits=refused)
    assert replayer.result.stats.replayed == 3
    assert replayer.result.error is not None
    assert "could not commit progress under group 'g': no answer" in replayer.result.error
    assert "replayed again by the next run" in replayer.result.error


def answered(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
    return future


class FakeAdmin:
    """Answers each request with the next of ``answers`` (the last one repeats)."""

    def __init__(self, *answers: Any) -> None:
        self.requests: list[Any] = []
        self._answers = list(answers)

    def alter_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> Any:
        self.requests.extend(requests)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return {requests[0].group_id: answered(answer)}


def test_group_offsets_commits_through_the_admin_api() -> None:
    ok = types.SimpleNamespace(topic_partitions=[TopicPartition("d", 0, 5)])
    admin = FakeAdmin(ok)
    GroupOffsets(admin, "ckb-replay.d")({("d", 0): 5, ("d", 1): 2})
    (request,) = admin.requests
    assert request.group_id == "ckb-replay.d"
    assert [(tp.topic, tp.partition, tp.offset) for tp in request.topic_partitions] == [
        ("d", 0, 5),
        ("d", 1, 2),
    ]


def test_group_offsets_retries_while_the_coordinator_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_commits.time, "sleep", lambda _s: None)
    busy = types.SimpleNamespace(
        topic="d", partition=0, offset=5, error=KafkaError(KafkaError.NOT_COORDINATOR)
    )
    ok = types.SimpleNamespace(topic_partitions=[TopicPartition("d", 0, 5)])
    admin = FakeAdmin(types.SimpleNamespace(topic_partitions=[busy]), ok)
    GroupOffsets(admin, "g")({("d", 0): 5})
    assert len(admin.requests) == 2


def test_group_offsets_raises_on_a_partition_error_or_no_answer() -> None:
    error = KafkaError(KafkaError.UNKNOWN_MEMBER_ID)
    refused = types.SimpleNamespace(topic="d", partition=0, offset=5, error=error)
    with pytest.raises(KafkaException):
        GroupOffsets(FakeAdmin(types.SimpleNamespace(topic_partitions=[refused])), "g")(
            {("d", 0): 5}
        )
    with pytest.raises(KafkaException):
        timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT))
        GroupOffsets(FakeAdmin(timed_out), "g")({("d", 0): 5})


def test_dry_run_lists_and_commits_nothing() -> None:
    commits, replayer = run_replayer(letters(4, filtered_every=2), None)
    assert commits.commits == []
    assert len(replayer.result.selected) == 4
    assert replayer.result.stats.summary_line(dry_run=True) == (
        "examined 4, would replay 4, filtered out 0, skipped 0"
    )


def render(result: ReplayResult, dry_run: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    render_summary(result, ReplayOptions("orders.dlq", "g", dry_run=dry_run), console)
    return buffer.getvalue()


def test_summary_notes_filtered_and_skipped_letters() -> None:
    result = ReplayResult()
    result.stats.count("task_failed", "replayed")
    result.stats.count("decode_error", "filtered")
    result.stats.count(None, "skipped")
    output = render(result)
    assert "done: examined 3, replayed 1, filtered out 1, skipped 1" in output
    assert "committed past under group g" in output
    assert "not a ckb dead letter" in output
    for reason in ("task_failed", "decode_error", "(none)"):
        assert reason in output


def test_summary_of_a_stopped_run_and_of_a_dry_run() -> None:
    result = ReplayResult(interrupted=True)
    assert "stopped: examined 0" in render(result)
    dry = render(ReplayResult(), dry_run=True)
    assert "dry run: examined 0, would replay 0" in dry
    assert "nothing produced, nothing committed" in dry


# -- the command line -----------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["dlq", "replay", *args])


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "yesterday"], "'--since'"),
        (["--reason", "task_exploded"], "'--reason'"),
        (["--limit", "0"], "'--limit'"),
        (["--to", "orders.dlq"], "'--to'"),
    ],
)
def test_usage_errors_exit_2_naming_the_option(args: list[str], option: str) -> None:
    result = invoke("--from", "orders.dlq", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_from_is_required() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "--from" in result.output


def test_config_errors_exit_2(tmp_path: Any) -> None:
    result = invoke("--from", "orders.dlq", "-c", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_unreachable_kafka_exits_1_with_a_clear_message(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_plan, "METADATA_TIMEOUT", 1.0)
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:9'}\nroutes: [{topic: orders, task: t}]\n"
    )
    result = invoke("--from", "orders.dlq", "-c", str(config))
    assert result.exit_code == 1, result.output
    assert "cannot read 'orders.dlq' from Kafka at 127.0.0.1:9" in result.output


# -- trust: which letters a replay may send, and where ----------------------------------------


def with_headers(letter: DeadLetter, **extra: bytes) -> DeadLetter:
    """``letter`` with headers appended (``ckb_replay_count`` names ``ckb.replay.count``)."""
    added = tuple((name.replace("_", "."), value) for name, value in extra.items())
    record = letter.record
    return DeadLetter.from_record(replace(record, headers=(*record.headers, *added)))


TRUSTED = Trust(group="bridge-group", consumed=lambda topic: topic == "orders", max_replays=3)


def test_a_dead_letter_parses_its_group_and_replay_count() -> None:
    letter = dead_letter()
    assert letter.group == "bridge-group"
    assert letter.replays == 0  # never replayed: no header
    assert with_headers(letter, ckb_replay_count=b"2").replays == 2
    for garbled in (b"two", b"-1", b""):
        assert with_headers(letter, ckb_replay_count=garbled).replays is None
    assert foreign().group is None


def test_trusted_letters_are_replayed() -> None:
    selection = Selection(trust=TRUSTED)
    assert selection.judge(dead_letter()) == (Verdict.REPLAY, None)
    assert selection.judge(with_headers(dead_letter(), ckb_replay_count=b"2")) == (
        Verdict.REPLAY,
        None,
    )


def test_a_letter_of_another_group_is_refused_unless_any_group() -> None:
    other = with_headers(dead_letter(), ckb_group=b"someone-else")  # the last value counts
    assert Selection(trust=TRUSTED).judge(other) == (Verdict.REFUSED, Refusal.OTHER_GROUP)
    # not a ckb dead letter at all: no group either, even with --to
    to = Selection(to_topic="elsewhere", trust=TRUSTED)
    assert to.judge(foreign()) == (Verdict.REFUSED, Refusal.OTHER_GROUP)
    any_group = Trust(group=None, consumed=TRUSTED.consumed)
    assert Selection(trust=any_group).judge(other) == (Verdict.REPLAY, None)


def test_a_letter_for_a_topic_no_route_consumes_needs_to_or_allow_any_topic() -> None:
    legacy = dead_letter(source=Record("legacy", 0, 1, b"k", b"v", (), 1))
    assert Selection(trust=TRUSTED).judge(legacy) == (Verdict.REFUSED, Refusal.UNROUTED_TOPIC)
    assert Selection(to_topic="legacy", trust=TRUSTED).judge(legacy) == (Verdict.REPLAY, None)
    anywhere = Trust(group="bridge-group", consumed=None)
    assert Selection(trust=anywhere).judge(legacy) == (Verdict.REPLAY, None)


def test_a_letter_replayed_max_replays_times_is_refused() -> None:
    selection = Selection(trust=TRUSTED)
    for count in (b"3", b"4", b"99", b"garbled"):
        letter = with_headers(dead_letter(), ckb_replay_count=count)
        assert selection.judge(letter) == (Verdict.REFUSED, Refusal.MAX_REPLAYS), count
    once = Selection(trust=Trust(max_replays=1))
    assert once.judge(with_headers(dead_letter(), ckb_replay_count=b"1"))[0] is Verdict.REFUSED
    assert once.judge(dead_letter())[0] is Verdict.REPLAY


def test_filters_and_skipping_come_before_refusals() -> None:
    other = with_headers(dead_letter("decode_error"), ckb_group=b"someone-else")
    selection = Selection(reasons=frozenset({"task_failed"}), trust=TRUSTED)
    assert selection.judge(other) == (Verdict.FILTERED, None)
    assert Selection(trust=TRUSTED).judge(foreign()) == (Verdict.SKIPPED, None)


def test_the_default_trust_checks_only_the_replay_count() -> None:
    assert Trust().max_replays == DEFAULT_MAX_REPLAYS == 3
    other = with_headers(dead_letter(), ckb_group=b"someone-else")
    assert Selection().judge(other) == (Verdict.REPLAY, None)
    tired = with_headers(dead_letter(), ckb_replay_count=b"3")
    assert Selection().judge(tired) == (Verdict.REFUSED, Refusal.MAX_REPLAYS)


def test_trust_from_the_settings_and_the_options() -> None:
    settings = Settings(
        kafka=KafkaSettings(group_id="bridge-group"),
        routes=[Route(topic="orders", task="t"), Route(topic="^events\\..*", task="t")],
    )
    trust = trust_for(settings, any_group=False, allow_any_topic=False, max_replays=5)
    assert (trust.group, trust.max_replays) == ("bridge-group", 5)
    assert trust.consumed is not None
    assert trust.consumed("orders") and trust.consumed("events.a")
    assert not trust.consumed("legacy") and not trust.consumed("events.a.dlq")
    loose = trust_for(settings, any_group=True, allow_any_topic=True, max_replays=3)
    assert (loose.group, loose.consumed) == (None, None)


def test_a_replayed_record_carries_its_replay_count() -> None:
    producer = FakeProducer()
    twice = with_headers(dead_letter(), ckb_replay_count=b"2")
    run_replayer([dead_letter(dlq_offset=0), replace_offset(twice, 1)], producer)
    assert [p["headers"] for p in producer.produced] == [
        [*OWN_HEADERS, ("ckb.replay.count", b"1")],
        [*OWN_HEADERS, ("ckb.replay.count", b"3")],
    ]


def replace_offset(letter: DeadLetter, offset: int) -> DeadLetter:
    return DeadLetter.from_record(replace(letter.record, offset=offset))


def test_the_bridge_keeps_the_replay_count_when_it_dead_letters_a_replayed_record() -> None:
    """Without it every cycle would start again at 0 and --max-replays would never bite."""
    replayed = Record("orders", 0, 9, b"k", b"v", (("a", b"1"), ("ckb.replay.count", b"2")), 1)
    headers = dlq_headers(replayed, Failure("task_failed"), "bridge-group", NOW)
    assert header_text(headers, "ckb.replay.count") == "2"
    assert sum(1 for name, _ in headers if name == "ckb.replay.count") == 1
    assert DeadLetter.from_record(Record("orders.dlq", 0, 0, b"k", b"v", headers, 1)).replays == 2


def test_refused_letters_are_counted_reported_and_committed_past_not_produced() -> None:
    producer = FakeProducer()
    batch = [
        replace_offset(dead_letter(), 0),
        replace_offset(with_headers(dead_letter(), ckb_group=b"someone-else"), 1),
        replace_offset(with_headers(dead_letter(), ckb_replay_count=b"3"), 2),
        replace_offset(with_headers(dead_letter("no_route"), ckb_replay_count=b"7"), 3),
        replace_offset(dead_letter(), 4),
    ]
    commits, replayer = run_replayer(batch, producer, Selection(trust=TRUSTED))
    assert len(producer.produced) == 2
    assert commits.commits == [{0: 5}]
    stats = replayer.result.stats
    assert stats.refusals == {"other_group": 1, "max_replays": 2}
    assert stats.by_reason["task_failed"] == {"replayed": 2, "refused": 2}
    assert stats.by_reason["no_route"] == {"refused": 1}
    assert stats.summary_line() == ("examined 5, replayed 2, filtered out 0, skipped 0, refused 3")
    assert replayer.result.refused == []  # listed by a dry run only


def test_a_dry_run_lists_the_refused_letters_with_why() -> None:
    batch = [
        replace_offset(dead_letter(), 0),
        replace_offset(with_headers(dead_letter(), ckb_replay_count=b"3"), 1),
    ]
    _, replayer = run_replayer(batch, None, Selection(trust=TRUSTED))
    assert len(replayer.result.selected) == 1
    assert replayer.result.refused == [(*listing_row(batch[1]), "max_replays")]


def test_summary_says_what_was_refused_why_and_how_to_replay_it() -> None:
    result = ReplayResult()
    result.stats.count("task_failed", "replayed")
    for refusal in (Refusal.OTHER_GROUP, Refusal.UNROUTED_TOPIC, Refusal.MAX_REPLAYS):
        result.stats.count("task_failed", "refused", refusal)
    buffer = io.StringIO()
    options = ReplayOptions("orders.dlq", "g", Selection(trust=TRUSTED))
    render_summary(result, options, Console(file=buffer, width=200))
    output = buffer.getvalue()
    assert "done: examined 4, replayed 1, filtered out 0, skipped 0, refused 3" in output
    assert "refused 1: ckb.group is not bridge-group" in output and "--any-group" in output
    assert "no route consumes" in output and "--allow-any-topic" in output
    assert "--max-replays (3)" in output
    assert "they stay in orders.dlq" in output
    assert "committed past under group g" in output


def test_max_replays_must_be_at_least_one() -> None:
    result = invoke("--from", "orders.dlq", "--max-replays", "0")
    assert result.exit_code == 2, result.output
    assert "'--max-replays'" in result.output


def test_the_command_line_builds_the_trust_from_the_config(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ReplayOptions] = []

    def fake_run(_kafka: KafkaSettings, options: ReplayOptions) -> ReplayResult:
        seen.append(options)
        return ReplayResult()

    monkeypatch.setattr("bridge.replay.run_with_progress", fake_run)
    config = tmp_path / "bridge.yaml"
    config.write_text("kafka: {group_id: bridge-group}\nroutes: [{topic: orders, task: t}]\n")
    assert invoke("--from", "orders.dlq", "-c", str(config)).exit_code == 0
    flags = ("--any-group", "--allow-any-topic", "--max-replays", "5")
    assert invoke("--from", "orders.dlq", "-c", str(config), *flags).exit_code == 0
    strict, loose = (options.selection.trust for options in seen)
    assert (strict.group, strict.max_replays) == ("bridge-group", 3)
    assert strict.consumed is not None and strict.consumed("orders")
    assert not strict.consumed("legacy")
    assert (loose.group, loose.consumed, loose.max_replays) == (None, None, 5)


def test_a_letter_written_without_its_value_is_never_replayed() -> None:
    """Replaying it would produce a record with no value: a tombstone that deletes its key
    on a compacted topic. The value is in the source topic (``ckb.original.*``)."""
    dropped = with_headers(dead_letter(), ckb_value_dropped=b"300000")
    assert dropped.value_dropped
    anything = Trust(group=None, consumed=None, max_replays=100)
    for trust in (TRUSTED, anything):
        assert Selection(trust=trust).judge(dropped) == (Verdict.REFUSED, Refusal.VALUE_DROPPED)
    from bridge.replay.render import refusal_notes

    notes = refusal_notes({Refusal.VALUE_DROPPED.value: 2}, TRUSTED)
    assert notes and "ckb.value.dropped" in notes[0]
