"""The pure parts of the ``rpc://`` result source: the reply queue's name and expiry, where a
reply goes (completions, strays, nowhere), the ledger it gives, the settings that allow it, the
``reply_to`` every task message carries, and the worker check's view of rpc workers."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.backend_urls import backend_kind, rpc_without_amqp
from bridge.celery_app import make_celery_app
from bridge.dispatcher import Dispatcher, TaskRequest
from bridge.result_source import open_results
from bridge.results import TaskEvent
from bridge.rpc_results import (
    DEFAULT_EXPIRES,
    MAX_NAME,
    RepliesLedger,
    RpcResults,
    accepted_content,
    ack_hold,
    queue_expiry,
    reply_queue_name,
)
from bridge.settings import CelerySettings, ConfigError, Route, Settings, load_settings
from bridge.worker_probe import Replies, findings

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def source(strays: int = 10, hold: float = 0.0) -> RpcResults:
    def never() -> Any:
        raise AssertionError("no connection in a unit test")

    return RpcResults(never, "ckb.replies.g.x", 60.0, ["json"], hold > 0, hold, strays)


class Message:
    """What kombu hands a consumer callback: properties, and an ack to count."""

    tags = 0

    def __init__(self, task_id: str | None) -> None:
        self.properties = {"correlation_id": task_id} if task_id else {}
        self.acked = 0
        Message.tags += 1
        self.delivery_tag = Message.tags

    def ack(self) -> None:
        self.acked += 1


def reply(results: RpcResults, task_id: str, status: str, **meta: Any) -> Message:
    message = Message(task_id)
    results._on_reply({"task_id": task_id, "status": status, **meta}, message)
    return message


class Channel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool) -> None:
        self.acks.append((tag, multiple))


def acks_now(results: RpcResults) -> list[tuple[int, bool]]:
    """The acks the consumer gives when it next acks (every ``ACK_EVERY`` seconds)."""
    channel = Channel()
    results._ack_due(channel, time.monotonic())
    return channel.acks


def drained(results: RpcResults) -> list[TaskEvent]:
    events = []
    while not results.completions.empty():
        events.append(results.completions.get())
    return events


def test_the_queue_is_the_static_members_own_else_this_processs() -> None:
    assert reply_queue_name("orders", "bridge-0") == "ckb.replies.orders.bridge-0"
    one, two = reply_queue_name("orders", None), reply_queue_name("orders", None)
    assert one != two, "two bridges of one process (or host) never share a queue"
    assert one.startswith(f"ckb.replies.orders.{socket.gethostname()}.{os.getpid()}.")


def test_a_long_group_id_still_makes_a_valid_distinct_name() -> None:
    a, b = reply_queue_name("g" * 300, "a"), reply_queue_name("g" * 300, "b")
    assert a != b and len(a.encode()) <= MAX_NAME and len(b.encode()) <= MAX_NAME


@pytest.mark.parametrize(
    ("expires", "seconds"),
    [(3600, 3600.0), (timedelta(hours=2), 7200.0), (None, DEFAULT_EXPIRES), (0, DEFAULT_EXPIRES)],
)
def test_an_unused_queue_lives_as_long_as_celery_keeps_results(
    expires: Any, seconds: float
) -> None:
    assert queue_expiry(expires) == seconds


def test_the_accepted_content_is_celerys_result_consumers() -> None:
    conf = SimpleNamespace(result_accept_content=None, accept_content=["json", "msgpack"])
    assert accepted_content(conf) == ["json", "msgpack"]
    conf.result_accept_content = ["json"]
    assert accepted_content(conf) == ["json"]


def test_a_watched_reply_is_reported_and_acked_a_final_one_once() -> None:
    results = source()
    results.watch(["t1"])
    acks = [reply(results, "t1", "STARTED"), reply(results, "t1", "SUCCESS", result=3)]
    acks.append(reply(results, "t1", "SUCCESS", result=3))  # a duplicate run's reply
    assert [(e.task_id, e.state) for e in drained(results)] == [
        ("t1", "STARTED"),
        ("t1", "SUCCESS"),
    ]
    assert acks_now(results) == [(acks[-1].delivery_tag, True)], "all three, with one ack"


def test_a_failure_carries_its_exception() -> None:
    results = source()
    results.watch(["t2"])
    exc = {"exc_type": "PlannedFailure", "exc_message": ["boom"], "exc_module": "app"}
    reply(results, "t2", "FAILURE", result=exc, traceback="Traceback …")
    (event,) = drained(results)
    assert (event.state, event.error_class, event.error_message) == (
        "FAILURE",
        "PlannedFailure",
        "boom",
    )


def test_a_final_nobody_watches_is_acked_and_kept_for_the_ledger_progress_is_dropped() -> None:
    results = source()
    reply(results, "old1", "STARTED")
    done = reply(results, "old2", "SUCCESS")
    assert acks_now(results) == [(done.delivery_tag, True)], "never requeued to the only consumer"
    assert drained(results) == []
    ledger = RepliesLedger(results)
    known = ledger.lookup(["old1", "old2", "new"])
    assert list(known.finals) == ["old2"] and known.finals["old2"].state == "SUCCESS"
    assert known.in_progress == set(), "rpc:// keeps no dispatch markers"
    ledger.mark(["new"], 60.0)  # nowhere to write: nothing happens
    assert ledger.lookup(["new"]).finals == {}


def test_strays_are_bounded_oldest_first() -> None:
    results = source(strays=3)
    for n in range(5):
        reply(results, f"s{n}", "SUCCESS")
    assert sorted(results.stored_finals([f"s{n}" for n in range(5)])) == ["s2", "s3", "s4"]


def test_a_static_member_holds_its_acks_then_gives_them_at_once() -> None:
    results, channel = source(hold=5.0), Channel()
    results.watch(["h1", "h2"])
    messages = [reply(results, "h1", "SUCCESS"), reply(results, "h2", "SUCCESS")]
    assert [m.acked for m in messages] == [0, 0], "held: a successor would get them again"
    assert len(drained(results)) == 2, "reported at once all the same"
    results._ack_due(channel, time.monotonic())
    assert channel.acks == [], "not before hold seconds"
    results._ack_due(channel, time.monotonic() + 5.0)
    assert channel.acks == [(messages[-1].delivery_tag, True)], "one ack for all"
    results._ack_due(channel, time.monotonic() + 10.0)
    assert len(channel.acks) == 1


def test_acks_are_held_a_few_commit_intervals() -> None:
    assert ack_hold(1.0) == 5.0 and ack_hold(10.0) > 20.0


def test_a_reply_without_task_id_or_state_is_acked_and_ignored() -> None:
    results = source()
    results.watch(["t9"])
    messages = [Message(None), Message("t9"), Message("t9")]
    results._on_reply({"status": "SUCCESS"}, messages[0])
    results._on_reply(b"not a dict", messages[1])
    results._on_reply({"task_id": "t9"}, messages[2])
    assert acks_now(results) == [(messages[-1].delivery_tag, True)] and drained(results) == []


def test_unwatched_ids_and_their_late_progress_are_not_reported() -> None:
    results = source()
    results.watch(["t3"])
    results.unwatch("t3")
    reply(results, "t3", "RETRY")
    assert drained(results) == []


def test_rpc_is_a_backend_kind_and_needs_an_amqp_broker() -> None:
    assert backend_kind("rpc://") == "rpc"
    assert rpc_without_amqp(AMQP, "rpc://") is None
    assert rpc_without_amqp("pyamqp://h//", "rpc://") is None
    assert rpc_without_amqp("redis://h/0", "redis://h/1") is None
    problem = rpc_without_amqp("redis://h/0", "rpc://")
    assert problem is not None and problem.startswith("celery.result_backend rpc://")


def test_rpc_with_a_redis_broker_is_a_config_error_naming_the_fix(tmp_path: Any) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "celery: {broker_url: 'redis://127.0.0.1:6379/0', result_backend: 'rpc://'}\n"
        "routes: [{topic: t, task: x}]\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert "celery.result_backend rpc://" in str(raised.value)
    assert "use an amqp:// broker" in str(raised.value)


def rpc_settings(**consumer: str) -> Settings:
    celery = CelerySettings(broker_url=AMQP, result_backend="rpc://")
    return Settings(
        kafka={"group_id": "orders", "consumer": consumer},
        celery=celery,
        routes=[Route(topic="t", task="x")],
    )


def test_open_results_gives_the_reply_queue_no_markers_and_no_redis() -> None:
    settings = rpc_settings(**{"group.instance.id": "bridge-0"})
    parts = open_results(settings, make_celery_app(settings.celery))
    assert isinstance(parts.source, RpcResults) and isinstance(parts.ledger, RepliesLedger)
    assert parts.reply_to == "ckb.replies.orders.bridge-0"
    assert (parts.markers, parts.redis) == (False, None)


def test_every_task_message_names_the_reply_queue_and_its_task_id() -> None:
    settings = rpc_settings()
    app = make_celery_app(settings.celery)
    request = TaskRequest("id-1", "x", [1], {}, None, {}, "label")
    _, properties, _, _ = Dispatcher(app, reply_to="ckb.replies.q").encode(request).message
    assert (properties["reply_to"], properties["correlation_id"]) == ("ckb.replies.q", "id-1")
    _, properties, _, _ = Dispatcher(app).encode(request).message
    assert properties["reply_to"] == "", "no reply asked for with other backends"


def judge_rpc(bridge_backend: str, worker_conf: dict[str, Any]) -> list[Any]:
    settings = Settings(
        celery={"broker_url": AMQP, "result_backend": bridge_backend},
        routes=[{"topic": "orders", "task": "billing.charge"}],
    )
    conf = {"result_serializer": "json", "task_ignore_result": False, **worker_conf}
    replies = Replies(conf={"w1@h": conf}, registered={"w1@h": ["billing.charge"]}, queues={})
    return findings(replies, settings, "json")


def test_the_worker_check_wants_rpc_on_both_sides_and_persistent_replies() -> None:
    assert judge_rpc("rpc://", {"result_backend": "rpc://", "result_persistent": True}) == []
    (transient,) = judge_rpc("rpc://", {"result_backend": "rpc://", "result_expires": 1})
    assert transient.level == "warning" and "result_persistent=True" in transient.message
    for bridge, worker in (("rpc://", "redis://r/1"), ("redis://r/1", "rpc://")):
        found = judge_rpc(bridge, {"result_backend": worker, "result_persistent": True})
        errors = [f for f in found if f.level == "error"]
        assert errors and errors[0].tasks == frozenset({"billing.charge"}), found


def test_unhealthy_while_rabbitmq_cannot_be_reached_and_retried_until_stopped() -> None:
    calls: list[int] = []

    def refused() -> Any:
        calls.append(1)
        raise ConnectionRefusedError("RabbitMQ away")

    results = RpcResults(refused, "ckb.replies.g.x", 60.0, ["json"], False)
    results.start(wait=0.3)
    try:
        wait_until = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert len(calls) >= 3, "tried again (with a growing backoff)"
        assert not results.healthy
        assert results.crashes == 0, "an outage is not a crash"
    finally:
        results.stop()


def test_a_bug_in_the_consumer_is_logged_counted_and_restarted() -> None:
    def broken() -> Any:
        raise RuntimeError("a bug")

    results = RpcResults(broken, "ckb.replies.g.x", 60.0, ["json"], False)
    results.start(wait=0.3)
    try:
        wait_until = time.monotonic() + 5
        while results.crashes < 2 and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert results.crashes >= 2 and not results.healthy
    finally:
        results.stop()


def test_the_compose_rpc_env_file_points_every_celery_client_at_rabbitmq_and_rpc(
    tmp_path: Any,
) -> None:
    """``docker compose --env-file config/compose/rabbitmq-rpc.env up``: the bridge, the
    workers and Flower on RabbitMQ with rpc:// results, and a bridge config that loads."""
    from tests.unit.test_deploy_files import COMPOSE_BRIDGE, REPO, compose, env_file, interpolate

    variables = env_file(REPO / "config" / "compose" / "rabbitmq-rpc.env")
    assert variables["COMPOSE_PROFILES"] == "rabbitmq"
    services = compose()["services"]
    for name in ("bridge", "worker", "flower"):
        env = services[name]["environment"]
        assert interpolate(env["CKB_CELERY__RESULT_BACKEND"], variables) == "rpc://", name
        assert interpolate(env["CKB_CELERY__BROKER_URL"], variables).startswith("amqp://")
    config = tmp_path / "bridge.yaml"
    config.write_text(COMPOSE_BRIDGE.read_text("utf-8"), "utf-8")
    bridge = services["bridge"]["environment"]
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("CKB_CELERY__BROKER_URL", "CKB_CELERY__RESULT_BACKEND"):
            patch.setenv(variable, interpolate(bridge[variable], variables))
        settings = load_settings(config)
    assert settings.celery.result_backend == "rpc://"


def test_the_example_worker_sends_rpc_replies_persistent() -> None:
    from tasks.celeryconfig import settings_from_env

    assert settings_from_env()["result_persistent"] is True
