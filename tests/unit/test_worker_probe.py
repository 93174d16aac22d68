"""Judging the workers' remote-control answers: can the bridge see the outcomes it waits for?"""

from __future__ import annotations

from typing import Any

from bridge.settings import Settings
from bridge.worker_probe import Finding, Replies, findings

SETTINGS = Settings(
    celery={"result_backend": "redis://:s3cret@redis:6379/1"},
    routes=[
        {"topic": "orders", "task": "billing.charge", "queue": "billing", "task_timeout": 600},
        {"topic": "audit", "task": "audit.write"},
    ],
)
GOOD_CONF = {
    "result_backend": "redis://:********@redis:6379/1",  # Celery masks passwords in replies
    "result_serializer": "json",
    "task_ignore_result": False,
    "result_expires": 86400,
}
REGISTERED = ["billing.charge [ignore_result=False]", "audit.write [ignore_result=False]"]
QUEUES = [{"name": "billing"}, {"name": "celery"}]


def judge(conf: dict[str, Any] | None = None, **replies: Any) -> list[Finding]:
    answer = Replies(
        conf={"w1@host": {**GOOD_CONF, **(conf or {})}},
        registered=replies.get("registered", {"w1@host": REGISTERED}),
        queues=replies.get("queues", {"w1@host": QUEUES}),
    )
    return findings(answer, SETTINGS, "json")


def only(found: list[Finding]) -> Finding:
    assert len(found) == 1, found
    return found[0]


def test_workers_that_store_outcomes_where_the_bridge_reads_them_pass() -> None:
    assert judge() == []


def test_task_ignore_result_is_an_error_naming_the_worker() -> None:
    finding = only(judge({"task_ignore_result": True}))
    assert finding.level == "error"
    assert "w1@host" in finding.message and "task_ignore_result=True" in finding.message


def test_a_task_with_ignore_result_is_an_error_naming_the_task() -> None:
    registered = {"w1@host": ["billing.charge [ignore_result=True]", "audit.write"]}
    finding = only(judge(registered=registered))
    assert (finding.level, "billing.charge" in finding.message) == ("error", True)


def test_another_serializer_is_an_error_with_the_setting_to_change() -> None:
    finding = only(judge({"result_serializer": "pickle"}))
    assert finding.level == "error"
    assert "celery.options.result_serializer: pickle" in finding.message


def test_no_result_backend_is_an_error() -> None:
    assert only(judge({"result_backend": None})).level == "error"


def test_another_backend_is_a_warning_and_never_shows_a_password() -> None:
    finding = only(judge({"result_backend": "redis://:********@other:6379/1"}))
    assert finding.level == "warning"
    assert "s3cret" not in finding.message and "other:6379" in finding.message


def test_results_expiring_before_the_longest_task_timeout_are_a_warning() -> None:
    finding = only(judge({"result_expires": 300}))
    assert finding.level == "warning" and "600s" in finding.message


def test_an_unknown_task_and_an_unconsumed_queue_are_warnings() -> None:
    found = judge(
        registered={"w1@host": ["billing.charge"]}, queues={"w1@host": [{"name": "billing"}]}
    )
    assert {f.level for f in found} == {"warning"}
    text = " ".join(f.message for f in found)
    assert "audit.write" in text and "'celery'" in text


def test_no_answer_is_a_warning_not_a_pass() -> None:
    found = findings(Replies({}, {}, {}), SETTINGS, "json")
    assert only(found).level == "warning"


def test_errors_name_the_tasks_whose_outcome_cannot_be_seen() -> None:
    from bridge.worker_probe import unobservable_tasks

    # the worker consumes only "billing": only billing.charge is blind because of it
    found = judge({"task_ignore_result": True}, queues={"w1@host": [{"name": "billing"}]})
    assert unobservable_tasks(found) == {"billing.charge"}
    registered = {"w1@host": ["billing.charge", "audit.write [ignore_result=True]"]}
    assert unobservable_tasks(judge(registered=registered)) == {"audit.write"}
    assert unobservable_tasks(judge({"result_expires": 300})) == frozenset()  # a warning
