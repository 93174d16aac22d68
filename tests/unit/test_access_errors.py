"""Refusals by Kafka and Redis said in one line with their fix, never with the password."""

from __future__ import annotations

import logging
import ssl

import kombu.exceptions
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from bridge.access_errors import (
    CREATE_TOPIC,
    DEAD_LETTER_TOPIC,
    KafkaClient,
    RedisClient,
    RefusalEvents,
    kafka_problem,
    redis_problem,
    refusal,
)
from bridge.access_problems import AccessProblems, RepeatedRefusals
from bridge.cli_exit import EXIT_RUNTIME, EXIT_USAGE
from bridge.commits import FatalConsumerError
from bridge.consumer_errors import ConsumerErrors
from bridge.dead_letter_errors import refused_fix

PASSWORD = "pa55-w0rd-never-printed"
CONFIG = {
    "bootstrap.servers": "127.0.0.1:9093",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "ckb-bridge",
    "sasl.password": PASSWORD,
}
CLIENT = KafkaClient.of(CONFIG)
BACKEND = RedisClient.from_url(
    "celery.result_backend", f"rediss://ckb-bridge:{PASSWORD}@127.0.0.1:6390/1"
)


def error(code: int, text: str = "") -> KafkaError:
    return KafkaError(code, text) if text else KafkaError(code)


def test_the_principal_and_the_address_come_from_the_client_configuration() -> None:
    assert CLIENT.principal == "User:ckb-bridge"
    assert CLIENT.bootstrap == "127.0.0.1:9093"
    assert KafkaClient.of({"bootstrap.servers": "b:1"}).principal.startswith("User:<")
    assert (BACKEND.address, BACKEND.user) == ("127.0.0.1:6390", "ckb-bridge")


def test_a_missing_group_acl_names_the_grant_and_the_command() -> None:
    problem = kafka_problem(error(KafkaError.GROUP_AUTHORIZATION_FAILED), CLIENT, group="g1")
    assert problem is not None
    assert problem.message == (
        "Kafka refused group 'g1': the principal User:ckb-bridge needs READ on group g1: "
        "kafka-acls --bootstrap-server 127.0.0.1:9093 --add --allow-principal User:ckb-bridge "
        "--operation Read --group g1"
    )
    assert problem.exit_code == EXIT_RUNTIME  # the cluster refuses: not the user's settings


@pytest.mark.parametrize(
    ("needs", "said", "operations"),
    [
        ((), "READ and DESCRIBE", "--operation Read --operation Describe"),
        (DEAD_LETTER_TOPIC, "WRITE and DESCRIBE", "--operation Write --operation Describe"),
        (CREATE_TOPIC, "CREATE", "--operation Create"),
    ],
)
def test_a_missing_topic_acl_names_what_the_role_needs(
    needs: tuple[str, ...], said: str, operations: str
) -> None:
    refused = error(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    problem = (
        kafka_problem(refused, CLIENT, topic="orders", topic_needs=needs)
        if needs
        else kafka_problem(refused, CLIENT, topic="orders")  # a source topic by default
    )
    assert problem is not None
    assert problem.message.startswith(
        f"Kafka refused topic 'orders': the principal User:ckb-bridge needs {said} on topic orders"
    )
    assert problem.message.endswith(f"{operations} --topic orders")


def test_a_missing_cluster_acl() -> None:
    problem = kafka_problem(
        error(KafkaError.CLUSTER_AUTHORIZATION_FAILED), CLIENT, cluster_needs="Describe"
    )
    assert problem is not None
    assert "needs DESCRIBE on the cluster" in problem.message
    assert problem.message.endswith("--operation Describe --cluster")


@pytest.mark.parametrize(
    "code", [KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED]
)
def test_a_wrong_password_is_a_settings_error_without_the_password(code: int) -> None:
    text = (
        "SASL authentication error: Authentication failed during authentication due to invalid "
        "credentials with SASL mechanism SCRAM-SHA-512"
    )
    problem = kafka_problem(error(code, text), CLIENT)
    assert problem is not None
    assert problem.message == (
        "Kafka at 127.0.0.1:9093 refused the login of user 'ckb-bridge' with SCRAM-SHA-512 (SASL "
        "authentication failed): wrong password, or no such user on the broker: fix "
        "kafka.consumer sasl.username and sasl.password (and sasl.mechanism)"
    )
    assert problem.exit_code == EXIT_USAGE
    assert PASSWORD not in problem.message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
            "certificate verify failed: broker certificate could not be verified, verify that "
            "ssl.ca.location is correctly configured or root CA certificates are installed",
            # without ssl.ca.location the certificate cannot be asked which check failed
            "could not be verified (certificate verify failed): it is signed by another CA, has "
            "expired or names another host; set kafka.consumer ssl.ca.location",
        ),
        (
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
            "certificate has expired",
            "has expired",
        ),
        (
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
            "hostname mismatch",
            "hostname mismatch",
        ),
        ("SSL handshake failed: client SSL authentication might be required", "client certificate"),
    ],
)
def test_tls_failures_say_which_check_failed(text: str, says: str) -> None:
    problem = kafka_problem(error(KafkaError._SSL, text), CLIENT)
    assert problem is not None and problem.settings
    assert says in problem.message
    assert problem.message.startswith("Kafka at 127.0.0.1:9093: ")


def test_anything_else_is_no_access_problem() -> None:
    assert kafka_problem(error(KafkaError._TRANSPORT, "Connection refused"), CLIENT) is None
    assert kafka_problem(error(KafkaError._ALL_BROKERS_DOWN), CLIENT) is None
    assert kafka_problem(None, CLIENT) is None


def test_a_timed_out_request_is_explained_by_the_last_refusal_event() -> None:
    events = RefusalEvents()
    events(error(KafkaError._TRANSPORT, "Connection refused"))  # not kept
    events(error(KafkaError._AUTHENTICATION, "SASL authentication error"))
    timed_out = KafkaException(error(KafkaError._TIMED_OUT))
    problem = refusal(timed_out, events, CLIENT)
    assert problem is not None and "refused the login of user 'ckb-bridge'" in problem.message
    assert refusal(timed_out, RefusalEvents(), CLIENT) is None


def test_a_refused_dead_letter_write_names_the_grant() -> None:
    fix = refused_fix(error(KafkaError.TOPIC_AUTHORIZATION_FAILED), "orders.dlq", CLIENT)
    assert "needs WRITE and DESCRIBE on topic orders.dlq" in fix
    assert fix.endswith("--operation Write --operation Describe --topic orders.dlq")
    # without a client: the static advice
    assert "WRITE" in refused_fix(error(KafkaError.TOPIC_AUTHORIZATION_FAILED), "t", None)


# == Redis ==================================================================================
def raised_from(cause: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised while handling ``cause`` (as redis-py and kombu raise theirs)."""
    try:
        try:
            raise cause
        except BaseException:
            raise outer  # noqa: B904 (the implicit context is what the libraries leave)
    except BaseException as exc:
        return exc


def test_wrongpass_through_kombu_is_a_settings_error() -> None:
    wrong = redis.AuthenticationError("invalid username-password pair or user is disabled.")
    exc = raised_from(wrong, kombu.exceptions.OperationalError("invalid username-password"))
    broker = RedisClient.from_url("celery.broker_url", f"redis://ckb-bridge:{PASSWORD}@h:6379/0")
    problem = redis_problem(exc, broker)
    assert problem is not None and problem.exit_code == EXIT_USAGE
    assert problem.message == (
        "Redis at h:6379 (celery.broker_url) refused the login of user 'ckb-bridge' (WRONGPASS: "
        "wrong password, or the user is disabled): fix the user and password in "
        "celery.broker_url; ACL GETUSER ckb-bridge shows the user"
    )
    assert PASSWORD not in problem.message


def test_noauth_asks_for_a_password() -> None:
    problem = redis_problem(redis.AuthenticationError("Authentication required."), BACKEND)
    assert problem is not None and "wants a password" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        "this user has no permissions to run the 'evalsha' command",  # Redis 7.0
        "User ckb-bridge has no permissions to run the 'evalsha' command",  # Redis 7.2+
    ],
)
def test_noperm_for_a_command_names_the_rule(text: str) -> None:
    problem = redis_problem(redis.exceptions.NoPermissionError(text), BACKEND, "marking tasks")
    assert problem is not None and problem.exit_code == EXIT_RUNTIME
    assert problem.message.startswith(
        "Redis at 127.0.0.1:6390 (celery.result_backend) refused user 'ckb-bridge' the command "
        "'evalsha' while marking tasks (NOPERM): ACL SETUSER ckb-bridge +evalsha"
    )


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("this user has no permissions to access one of the keys used as arguments", "~ckb-*"),
        ("No permissions to access a key", "~ckb-*"),
        ("this user has no permissions to access one of the channels used as arguments", "&c-*"),
        ("No permissions to access a channel", "&c-*"),
    ],
)
def test_noperm_for_a_key_or_a_channel_names_the_pattern(text: str, rule: str) -> None:
    exc = redis.exceptions.NoPermissionError(text)
    problem = redis_problem(exc, BACKEND, "watching", keys="ckb-*", channels="c-*")
    assert problem is not None
    kind = "channel" if rule.startswith("&") else "key"
    assert f"refused user 'ckb-bridge' a {kind} while watching (NOPERM): ACL SETUSER " in (
        problem.message
    )
    assert f"ckb-bridge {rule} (" in problem.message


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (10, "has expired"),
        (62, "not valid for 127.0.0.1:6390 (hostname mismatch)"),
        (20, "not signed by a CA this client trusts (certificate verify failed): set ssl_ca_certs"),
    ],
)
def test_certificate_failures_inside_a_connection_error(code: int, says: str) -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = code
    exc = raised_from(verify, redis.ConnectionError("Error 1 connecting to 127.0.0.1:6390."))
    problem = redis_problem(exc, BACKEND)
    assert problem is not None and problem.settings
    assert says in problem.message


def test_a_key_refused_in_a_pipeline_is_named_without_the_other_arguments() -> None:
    text = (
        "Command # 1 (SADD _kombu.binding.orders orders-payload-secret) of pipeline caused "
        "error: this user has no permissions to access one of the keys used as arguments"
    )
    problem = redis_problem(redis.exceptions.NoPermissionError(text), BACKEND, "publishing")
    assert problem is not None
    assert "refused user 'ckb-bridge' the key '_kombu.binding.orders' (SADD) while publishing" in (
        problem.message
    )
    assert "payload-secret" not in problem.message


def test_a_command_refused_inside_a_script() -> None:
    text = (
        "The user executing the script can't run this command or subcommand script: "
        "9a2b966a0a2d2d0e36ec32bc30fc89342b94a4bf, on @user_script:4."
    )
    problem = redis_problem(redis.ResponseError(text), BACKEND, "applying rate limits")
    assert problem is not None and not problem.settings
    assert "a command inside a Lua script while applying rate limits (NOPERM)" in problem.message


def test_a_redis_outage_is_no_access_problem() -> None:
    assert redis_problem(redis.ConnectionError("Connection refused"), BACKEND) is None
    assert redis_problem(redis.TimeoutError("Timeout"), BACKEND) is None


# == the problems in force ==================================================================
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_problem_is_logged_once_and_is_a_reason_until_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems = AccessProblems(logging.getLogger("test.access"))
    problem = kafka_problem(error(KafkaError.GROUP_AUTHORIZATION_FAILED), CLIENT, group="g1")
    assert problem is not None
    with caplog.at_level(logging.WARNING, "test.access"):
        for _ in range(3):
            problems.report("kafka:group", problem)
        assert problems.reasons() == [problem.message]
        problems.clear("kafka:group")
    assert problems.reasons() == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [problem.message]
    assert any(r.getMessage().startswith("resolved: Kafka refused group") for r in caplog.records)


def test_one_refusal_met_by_several_clients_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems = AccessProblems(logging.getLogger("test.access"))
    problem = kafka_problem(error(KafkaError._AUTHENTICATION), CLIENT)
    assert problem is not None
    with caplog.at_level(logging.ERROR, "test.access"):
        for key in ("kafka:connection", "kafka:lag", "kafka:dead-letters"):
            problems.report(key, problem, hold=60)
    assert problems.reasons() == [problem.message]
    assert [r.getMessage() for r in caplog.records] == [problem.message]


def test_librdkafkas_repeated_refusal_lines_are_dropped_once_the_bridge_said_it() -> None:
    problems = AccessProblems(logging.getLogger("test.access"))
    quiet = RepeatedRefusals(problems)

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("bridge.librdkafka", logging.ERROR, "", 0, text, None, None)

    refused = line("FAIL [ckb-consumer] ...: SASL authentication error: Authentication failed")
    assert quiet.filter(refused)  # nothing said yet
    problem = kafka_problem(error(KafkaError._AUTHENTICATION), CLIENT)
    assert problem is not None
    problems.report("kafka:connection", problem, hold=60)
    assert not quiet.filter(refused)
    assert quiet.filter(line("FAIL [ckb-consumer] ...: Connect to ipv4#127.0.0.1:9 failed"))


def test_a_held_problem_expires_when_it_is_no_longer_reported() -> None:
    clock = Clock()
    problems = AccessProblems(logging.getLogger("test.access"), clock)
    problem = kafka_problem(error(KafkaError._AUTHENTICATION), CLIENT)
    assert problem is not None
    problems.report("kafka:connection", problem, hold=60)
    clock.now += 59
    assert problems.reasons() == [problem.message]
    clock.now += 2
    assert problems.reasons() == []


def test_the_loop_reports_access_errors_and_clears_them_when_records_come() -> None:
    problems = AccessProblems(logging.getLogger("test.access"))
    errors = ConsumerErrors(CLIENT, "g1", problems)
    errors.seen(error(KafkaError._PARTITION_EOF), "orders")
    errors.seen(error(KafkaError._TRANSPORT, "Connection refused"), None)
    assert problems.reasons() == []
    errors.seen(error(KafkaError.TOPIC_AUTHORIZATION_FAILED), "orders")
    errors.seen(error(KafkaError.GROUP_AUTHORIZATION_FAILED), None)
    assert len(problems.reasons()) == 2
    assert "topic 'orders'" in problems.reasons()[0]
    errors.consumed("orders")
    assert problems.reasons() == []
    with pytest.raises(FatalConsumerError):
        errors.seen(KafkaError(KafkaError._FENCED, "fenced", fatal=True), None)
