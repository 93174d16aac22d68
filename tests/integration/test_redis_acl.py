"""The least-privilege Redis ACL rules (:mod:`bridge.stack.redis_acl`) on a real redis-server,
and each Redis refusal produced for real and said in one line with its fix.

A redis-server of this module's own holds the stack's users with exactly their rules: the
bridge (``ckb-bridge``) and a real Celery worker (``ckb-worker``) run the core path through
it (commit after success, failures dead-lettered, a rate limit and dispatch markers on) and
``ACL LOG`` stays empty. Users that each lack one rule then show what the bridge says when
Redis refuses a command, a key or a channel, or a wrong password; no line holds a password.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.access_errors import RedisClient
from bridge.access_problems import AccessProblems, RedisAccess
from bridge.celery_app import make_celery_app
from bridge.dispatch_ledger import DispatchLedger
from bridge.dispatcher import Dispatcher, PublishError, TaskRequest
from bridge.rate_limit import TokenBuckets
from bridge.results import ResultWatcher
from bridge.settings import CelerySettings
from bridge.stack import StackInfo
from bridge.stack.redis_acl import ADMIN_RULES, bridge_rules, worker_rules
from tests.integration.harness import (
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)

QUEUE = "ckb-acl-" + secrets.token_hex(4)
#: users lacking one rule each: what the bridge says when Redis refuses it
CRIPPLED = {
    "no-lpush": "+lpush",
    "no-scripts": "+evalsha",
    "no-result-keys": "~celery-task-meta-*",
    "no-result-channel": "&celery-task-meta-*",
    "no-kombu-keys": "~_kombu.*",
}


@dataclass(frozen=True)
class AclRedis:
    port: int
    passwords: dict[str, str]

    def url(self, user: str, db: int, password: str | None = None) -> str:
        return f"redis://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}/{db}"

    def admin(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url("ckb-admin", db))


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server")
    where = tmp_path_factory.mktemp("acl-redis")
    rules = {
        "ckb-admin": ADMIN_RULES,
        "ckb-bridge": bridge_rules([f"{QUEUE}*"]),
        "ckb-worker": worker_rules([f"{QUEUE}*"]),
        **{
            user: tuple(rule for rule in bridge_rules([f"{QUEUE}*"]) if rule != missing)
            for user, missing in CRIPPLED.items()
        },
    }
    passwords = {user: secrets.token_urlsafe(12) for user in rules}
    lines = ["user default off"] + [
        " ".join(["user", user, "on", f">{passwords[user]}", *rules[user]]) for user in rules
    ]
    (where / "users.acl").write_text("\n".join(lines) + "\n")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(where), "--aclfile", "users.acl"]  # fmt: skip
    with (where / "redis.log").open("wb") as out:
        process = subprocess.Popen(command, cwd=where, stdout=out, stderr=subprocess.STDOUT)
    server = AclRedis(port, passwords)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError((where / "redis.log").read_text()[-2000:])
            try:
                return bool(server.admin().ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 15, "redis-server with the ACL users")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def acl_worker(
    stack: StackInfo, acl_redis: AclRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """A real worker as ``ckb-worker``; the test's recorder writes as the admin."""
    env = {
        "CKB_CELERY__BROKER_URL": acl_redis.url("ckb-worker", 0),
        "CKB_CELERY__RESULT_BACKEND": acl_redis.url("ckb-worker", 1),
        "CKB_IT_RECORDER_URL": acl_redis.url("ckb-admin", 2),
    }
    log_dir = tmp_path_factory.mktemp("acl-worker")
    # the harness pings the worker through the stack's broker: this Redis, as the worker
    on_acl_redis = dataclasses.replace(stack, redis_url=acl_redis.url("ckb-worker", 0)[:-2])
    worker = start_worker(on_acl_redis, QUEUE, log_dir, 2, env=env)
    yield worker
    worker.stop()


def acl_denials(server: AclRedis) -> list[dict[str, Any]]:
    return [
        entry
        for entry in server.admin().acl_log(count=1000)
        if entry["username"] in ("ckb-bridge", "ckb-worker")
    ]


def test_the_core_path_with_exactly_the_least_privilege_rules(
    stack: StackInfo, kafka: Kafka, acl_redis: AclRedis, acl_worker: Worker, work_dir: Path
) -> None:
    partitions, total = 2, 60
    topic = kafka.create_topic(partitions, prefix="acl")
    failing = set(range(0, total, 10))
    values = [
        json.dumps({"n": n, **({"mode": "always_fail"} if n in failing else {})}).encode()
        for n in range(total)
    ]
    kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    # a rate limit and dispatch markers: the bridge's Lua scripts run too
    route = {"topic": topic, "task": "it.record", "queue": QUEUE, "call": "arg",
             "rate_limit": "1000/s"}  # fmt: skip
    config = bridge_config(stack, unique("g-acl"), [route])
    config["celery"] = {
        "broker_url": acl_redis.url("ckb-bridge", 0),
        "result_backend": acl_redis.url("ckb-bridge", 1),
    }
    bridge = start_bridge(config, work_dir)
    group = config["kafka"]["group_id"]
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 60, f"{topic} committed")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    recorded = Executions(acl_redis.admin(2))
    assert {run["payload"]["n"] for run in recorded.of(topic)} == set(range(total)) - failing
    letters = kafka.read_all(f"{topic}.dlq", len(failing))
    assert sorted(json.loads(letter.value())["n"] for letter in letters) == sorted(failing)
    assert acl_denials(acl_redis) == [], "the rules lack something the bridge or worker used"
    log = bridge.log_path.read_text()
    assert "worker check" not in log, "the remote-control check of the workers failed"
    assert all(password not in log for password in acl_redis.passwords.values())


def problems_of(
    server: AclRedis, user: str, setting: str, key: str
) -> tuple[AccessProblems, RedisAccess]:
    problems = AccessProblems(logging.getLogger("test.access"))
    client = RedisClient.from_url(setting, server.url(user, 0))
    return problems, RedisAccess(client, problems, key)


def only_reason(problems: AccessProblems) -> str:
    reasons = problems.reasons()
    assert len(reasons) == 1, reasons
    return reasons[0]


def test_redis_refusals_name_the_rule_and_never_the_password(acl_redis: AclRedis) -> None:
    where = f"Redis at 127.0.0.1:{acl_redis.port}"
    said: list[str] = []

    # a command: the broker refuses LPUSH (publishing a task)
    problems, access = problems_of(acl_redis, "no-lpush", "celery.broker_url", "redis:broker")
    app = make_celery_app(CelerySettings(broker_url=acl_redis.url("no-lpush", 0)))
    dispatcher = Dispatcher(app, retry_for=0.0, access=access)
    request = TaskRequest("id-1", "it.record", [1], {}, QUEUE, {}, "label", 0)
    with pytest.raises(PublishError) as refused:
        dispatcher.publish([dispatcher.encode(request)])
    assert refused.value.refused
    dispatcher.close()
    said.append(only_reason(problems))
    assert said[-1] == (
        f"{where} (celery.broker_url) refused user 'no-lpush' the command 'lpush' while "
        "publishing tasks (NOPERM): ACL SETUSER no-lpush +lpush (README: TLS and authentication)"
    )

    # a key: kombu's binding table of the queue (SADD in a pipeline)
    problems, access = problems_of(acl_redis, "no-kombu-keys", "celery.broker_url", "redis:broker")
    app = make_celery_app(CelerySettings(broker_url=acl_redis.url("no-kombu-keys", 0)))
    dispatcher = Dispatcher(app, retry_for=0.0, access=access)
    with pytest.raises(PublishError):
        dispatcher.publish([dispatcher.encode(request)])
    dispatcher.close()
    said.append(only_reason(problems))
    assert said[-1] == (
        f"{where} (celery.broker_url) refused user 'no-kombu-keys' the key "
        f"'_kombu.binding.{QUEUE}' (SADD) while publishing tasks (NOPERM): ACL SETUSER "
        "no-kombu-keys ~<a pattern matching it> (README: TLS and authentication)"
    )

    # a command the rate limiter needs (EVALSHA of its bucket script)
    problems, access = problems_of(acl_redis, "no-scripts", "celery.result_backend", "redis:rate")
    client = redis.Redis.from_url(acl_redis.url("no-scripts", 1))
    assert TokenBuckets(client, "g", access).take("route", 10.0, 10, 1).granted == 0
    said.append(only_reason(problems))
    assert "refused user 'no-scripts' the command 'evalsha' while applying rate limits" in said[-1]

    # a key: results and dispatch markers read by the ledger
    problems, access = problems_of(
        acl_redis, "no-result-keys", "celery.result_backend", "redis:ledger"
    )
    client = redis.Redis.from_url(acl_redis.url("no-result-keys", 1))
    ledger = DispatchLedger(client, "celery-task-meta-", json.loads, access=access)
    assert not ledger.lookup(["id-1"]).finals
    said.append(only_reason(problems))
    assert said[-1] == (
        f"{where} (celery.result_backend) refused user 'no-result-keys' a key while reading "
        "results and dispatch markers (NOPERM): ACL SETUSER no-result-keys ~celery-task-meta-* "
        "~ckb-dispatched-* (README: TLS and authentication; ACL LOG names the key)"
    )

    # a channel: the result watcher's PSUBSCRIBE celery-task-meta-*
    said.append(watcher_reason(acl_redis, "no-result-channel", None))
    assert said[-1] == (
        f"{where} (celery.result_backend) refused user 'no-result-channel' a channel while "
        "watching task results (NOPERM): ACL SETUSER no-result-channel &celery-task-meta-* "
        "(README: TLS and authentication; ACL LOG names the channel)"
    )

    # a wrong password (WRONGPASS)
    said.append(watcher_reason(acl_redis, "ckb-bridge", "not-" + acl_redis.passwords["ckb-bridge"]))
    assert said[-1] == (
        f"{where} (celery.result_backend) refused the login of user 'ckb-bridge' (WRONGPASS: "
        "wrong password, or the user is disabled): fix the user and password in "
        "celery.result_backend; ACL GETUSER ckb-bridge shows the user"
    )
    for line in said:
        assert all(password not in line for password in acl_redis.passwords.values())


def watcher_reason(server: AclRedis, user: str, password: str | None) -> str:
    """What a result watcher connected as ``user`` reports, once it reported anything."""
    problems, access = problems_of(server, user, "celery.result_backend", "redis:results")
    url = server.url(user, 1, password)
    watcher = ResultWatcher(lambda: redis.Redis.from_url(url), access=access)
    watcher.start(wait=0.5)
    try:
        wait_for(lambda: bool(problems.reasons()), 10, "the watcher's refusal")
        assert not watcher.healthy
    finally:
        watcher.stop()
    return only_reason(problems)


def test_ckb_run_with_a_wrong_redis_password_says_so_once_and_is_not_ready(
    stack: StackInfo, kafka: Kafka, acl_redis: AclRedis, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, prefix="acl-pw")
    wrong = "wrong-" + secrets.token_hex(6)
    port = free_port()
    config = bridge_config(
        stack,
        unique("g-acl-pw"),
        [{"topic": topic, "task": "it.record", "queue": QUEUE}],
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
    )
    config["celery"] = {
        "broker_url": acl_redis.url("ckb-bridge", 0),
        "result_backend": acl_redis.url("ckb-bridge", 1, wrong),
    }
    bridge = start_bridge(config, work_dir)
    expected = (
        f"Redis at 127.0.0.1:{acl_redis.port} (celery.result_backend) refused the login of "
        "user 'ckb-bridge' (WRONGPASS"
    )
    try:
        wait_for(lambda: expected in " ".join(readiness(port)), 30, "the /readyz reason")
        time.sleep(1.5)  # the watcher retries meanwhile: the line must not repeat
        assert bridge.alive(), bridge.log_tail()
    finally:
        bridge.terminate()
    log = bridge.log_path.read_text()
    errors = [line for line in log.splitlines() if expected in line]
    assert len(errors) == 1 and " ERROR " in errors[0], errors
    assert wrong not in log and acl_redis.passwords["ckb-bridge"] not in log


def readiness(port: int) -> list[str]:
    """The reasons ``/readyz`` gives (none while it cannot be asked yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            body = reply.read()
    except urllib.error.HTTPError as refused:
        body = refused.read()
    except OSError:
        return []
    return list(json.loads(body).get("reasons", []))
