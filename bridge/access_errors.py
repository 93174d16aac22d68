"""What a refusal by Kafka or Redis means, in one line that names what is missing and the fix.

A wrong password, a TLS certificate the client cannot accept (an unknown CA, another host's,
an expired one) and a missing grant (a Kafka ACL, a Redis ACL rule) fail the same way on every
retry until someone changes a setting or a grant, and neither librdkafka's nor redis-py's words
name the bridge's setting or the grant. :func:`kafka_problem` and :func:`redis_problem` turn
them into an :class:`AccessProblem`: the line (with the ``kafka-acls`` or ``ACL SETUSER``
command that grants what is missing) and whether the client's own settings are wrong (exit 2)
or the server refuses (exit 1). Anything else (a broker away, a timeout) is no access problem:
None.

The lines quote user names, hosts, topics, groups and commands, never a password: they are
built from the error code, the client's own configuration and fixed text, and what they take
from an error's text goes through :func:`~bridge.secrets.mask_text`.

:mod:`bridge.access_problems` holds the problems in force, for ``/readyz``.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from confluent_kafka import KafkaError, KafkaException

from bridge.cli_exit import EXIT_RUNTIME, EXIT_USAGE
from bridge.secrets import mask_text
from bridge.tls_probe import verify_result

#: where the full tables of grants are
GRANTS_DOC = "README: TLS and authentication"


@dataclass(frozen=True)
class AccessProblem:
    """One refusal, said in one line with its fix."""

    message: str
    #: True: the client's own settings are wrong (password, CA); False: a grant is missing
    settings: bool

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.settings else EXIT_RUNTIME

    def __str__(self) -> str:
        return self.message


# == Kafka ==============================================================================
@dataclass(frozen=True)
class KafkaClient:
    """Who asks Kafka, for the messages: its brokers, its principal and its settings."""

    bootstrap: str
    #: ``User:<sasl.username>``, or a description when the broker derives it (mTLS)
    principal: str
    #: the settings section its connection properties come from
    section: str = "kafka.consumer"
    mechanism: str = ""
    #: ``ssl.ca.location``, to ask a refused certificate why (:mod:`bridge.tls_probe`)
    ca_location: str = ""

    @classmethod
    def of(cls, config: Mapping[str, Any], section: str = "kafka.consumer") -> KafkaClient:
        """From a librdkafka configuration (``consumer_config``, ``producer_config``, …)."""
        user = config.get("sasl.username")
        principal = f"User:{user}" if user else "User:<the bridge's principal>"
        mechanism = str(config.get("sasl.mechanism") or config.get("sasl.mechanisms") or "")
        bootstrap = str(config.get("bootstrap.servers", ""))
        ca = str(config.get("ssl.ca.location") or "")
        return cls(bootstrap, principal, section, mechanism, ca)


#: what each role of the bridge needs on a topic (Kafka ACL operation names)
SOURCE_TOPIC = ("Read", "Describe")
DEAD_LETTER_TOPIC = ("Write", "Describe")
CREATE_TOPIC = ("Create",)

_AUTHENTICATION = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})


class RefusalEvents:
    """A librdkafka ``error_cb`` that keeps the last authentication or TLS error event.

    A request made meanwhile (metadata, committed offsets) fails with a time-out, which says
    neither; the event says why. Served by the client's ``poll()``.
    """

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.code() in _AUTHENTICATION or error.code() in (KafkaError._SSL,):
            self.last = error


def list_topics(consumer: Any, events: RefusalEvents, timeout: float) -> Any:
    """``consumer.list_topics()`` that gives up as soon as a refusal event arrived (a wrong
    password or certificate fails at once; librdkafka would wait out the whole ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return consumer.list_topics(timeout=max(0.1, min(1.0, left)))
        except KafkaException:
            consumer.poll(0)  # serves the error events
            if events.last is not None or left <= 1.0:
                raise


class AccessRefusedError(Exception):
    """A one-shot command was refused: :attr:`problem` says why and what to do."""

    def __init__(self, problem: AccessProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def refusal(
    exc: BaseException, events: RefusalEvents, client: KafkaClient, group: str | None = None
) -> AccessProblem | None:
    """The access problem behind a failed request: its own error, or the last refusal
    event (call the client's ``poll(0)`` first, to serve the events)."""
    carried = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return kafka_problem(carried, client, group=group) or kafka_problem(events.last, client)


def kafka_acl_command(client: KafkaClient, operations: tuple[str, ...], resource: str) -> str:
    """The ``kafka-acls`` command that grants ``operations`` on ``resource`` (``--group g``,
    ``--topic t``, ``--cluster``)."""
    ops = " ".join(f"--operation {op}" for op in operations)
    return (
        f"kafka-acls --bootstrap-server {client.bootstrap} --add --allow-principal "
        f"{client.principal} {ops} {resource}"
    )


def kafka_problem(
    error: KafkaError | None,
    client: KafkaClient,
    *,
    topic: str | None = None,
    group: str | None = None,
    topic_needs: tuple[str, ...] = SOURCE_TOPIC,
    cluster_needs: str = "IdempotentWrite",
) -> AccessProblem | None:
    """The access problem ``error`` reports, or None when it is no access problem.

    ``topic``/``group`` name the resource when the caller knows it; ``topic_needs`` is what
    the caller's role needs on a topic (:data:`SOURCE_TOPIC`, :data:`DEAD_LETTER_TOPIC`, ...).
    """
    if error is None:
        return None
    code = error.code()
    if code in _AUTHENTICATION:
        return AccessProblem(_login_refused(client), settings=True)
    if code == KafkaError._SSL or (
        code == KafkaError._TRANSPORT and "SSL handshake failed" in error.str()
    ):
        return AccessProblem(_kafka_tls(client, error.str()), settings=True)
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        name = group or "<group>"
        return _refused(client, f"group '{name}'", ("Read",), f"group {name}", f"--group {name}")
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        name = topic or "<topic>"
        return _refused(client, f"topic '{name}'", topic_needs, f"topic {name}", f"--topic {name}")
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        return _refused(client, "a cluster operation", (cluster_needs,), "the cluster", "--cluster")
    return None


def _refused(
    client: KafkaClient, what: str, operations: tuple[str, ...], on: str, resource: str
) -> AccessProblem:
    needs = " and ".join(op.upper() for op in operations)
    command = kafka_acl_command(client, operations, resource)
    return AccessProblem(
        f"Kafka refused {what}: the principal {client.principal} needs {needs} on {on}: {command}",
        settings=False,
    )


def _login_refused(client: KafkaClient) -> str:
    user = client.principal.removeprefix("User:")
    how = f" with {client.mechanism}" if client.mechanism else ""
    return (
        f"Kafka at {client.bootstrap} refused the login of user '{user}'{how} (SASL "
        f"authentication failed): wrong password, or no such user on the broker: fix "
        f"{client.section} sasl.username and sasl.password (and sasl.mechanism)"
    )


def _kafka_tls(client: KafkaClient, text: str) -> str:
    where = f"Kafka at {client.bootstrap}"
    lowered = text.lower()
    ca_fix = f"set {client.section} ssl.ca.location to the file of the CA that signed it"
    if "expired" in lowered or "not yet valid" in lowered:
        return certificate_refused(where, "broker", _EXPIRED_CODE, client.bootstrap, ca_fix)
    if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        return certificate_refused(where, "broker", _MISMATCH_CODE, client.bootstrap, ca_fix)
    if "verify failed" in lowered or "could not be verified" in lowered:
        # librdkafka does not say which check failed: ask the certificate ourselves
        code = verify_result(client.bootstrap, client.ca_location) if client.ca_location else None
        return certificate_refused(where, "broker", code, client.bootstrap, ca_fix)
    if "client ssl authentication" in lowered or "certificate required" in lowered:
        return (
            f"{where}: the broker wants a client certificate: set {client.section} "
            "ssl.certificate.location and ssl.key.location"
        )
    return f"{where}: the TLS handshake failed ({mask_text(text)}): check {client.section} ssl.*"


def certificate_refused(where: str, whose: str, code: int | None, address: str, ca_fix: str) -> str:
    """The line for a refused certificate, by OpenSSL's verify result (None: unknown)."""
    if code in _EXPIRED:
        return (
            f"{where}: the {whose}'s TLS certificate has expired (or is not valid yet): renew "
            f"the {whose}'s certificate, and check this machine's clock"
        )
    if code in _HOST_MISMATCH:
        return (
            f"{where}: the {whose}'s TLS certificate is not valid for {address} (hostname "
            "mismatch): connect with a name its subjectAltName lists, or reissue it for this one"
        )
    if code is None or code == 0:
        return (
            f"{where}: the {whose}'s TLS certificate could not be verified (certificate verify "
            f"failed): it is signed by another CA, has expired or names another host; {ca_fix}"
        )
    return (
        f"{where}: the {whose}'s TLS certificate is not signed by a CA this client trusts "
        f"(certificate verify failed): {ca_fix}"
    )


# == Redis ==============================================================================
@dataclass(frozen=True)
class RedisClient:
    """Which of the bridge's Redis connections was refused, for the messages."""

    #: the setting that configures it: ``celery.result_backend`` or ``celery.broker_url``
    setting: str
    address: str
    user: str = "default"

    @classmethod
    def of(cls, setting: str, params: Mapping[str, Any]) -> RedisClient:
        """From ``redis.ConnectionPool`` keyword arguments (``result_backend_params``)."""
        address = f"{params.get('host', 'localhost')}:{params.get('port', 6379)}"
        if params.get("path"):
            address = str(params["path"])
        return cls(setting, address, str(params.get("username") or "default"))

    @classmethod
    def from_url(cls, setting: str, url: str) -> RedisClient:
        """From a ``redis://`` / ``rediss://`` URL (the first of a ``;`` list)."""
        parts = urlsplit(url.split(";", 1)[0])
        try:
            port = parts.port or 6379
        except ValueError:  # a password with an unencoded "/" (settings warn about it)
            port = 6379
        return cls(setting, f"{parts.hostname or 'localhost'}:{port}", parts.username or "default")


#: OpenSSL's verify results (``X509_V_ERR_*``) that name the cause
_EXPIRED = frozenset({9, 10})  # not yet valid, has expired
_HOST_MISMATCH = frozenset({62, 64})  # hostname, IP address mismatch
_EXPIRED_CODE, _MISMATCH_CODE = 10, 62
_NOPERM_COMMAND = re.compile(r"run the '([^']+)' command")
#: a refused command of a pipeline, as redis-py says it: the command and its first argument
#: (only those: the others may be a task's payload)
_PIPELINE_COMMAND = re.compile(r"Command # \d+ \((\S+) (\S+)")
#: a command a script runs is refused (Redis says so as a plain error, not NOPERM)
_SCRIPT_DENIED = "executing the script can't run this command"


def redis_problem(
    exc: BaseException, client: RedisClient, doing: str = "", keys: str = "", channels: str = ""
) -> AccessProblem | None:
    """The access problem ``exc`` (or an exception it was raised from) reports, or None.

    ``doing`` says what the bridge was doing (``watching task results``); ``keys`` and
    ``channels`` are the patterns the refused calls need, when the caller knows them.
    """
    where = f"Redis at {client.address} ({client.setting})"
    while_ = f" while {doing}" if doing else ""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return AccessProblem(_redis_tls(where, client, cause.verify_code), settings=True)
        if isinstance(cause, redis.AuthenticationError):
            return AccessProblem(_redis_login(where, client, str(cause)), settings=True)
        if isinstance(cause, redis.exceptions.NoPermissionError):
            grants = {"key": keys and f"~{keys}", "channel": channels and f"&{channels}"}
            return AccessProblem(_noperm(where, client, str(cause), grants, while_), False)
        if isinstance(cause, redis.ResponseError) and _SCRIPT_DENIED in str(cause):
            return AccessProblem(
                f"{where} refused user '{client.user}' a command inside a Lua script{while_} "
                f"(NOPERM): ACL LOG names it; grant it with ACL SETUSER {client.user} "
                f"+<command> ({GRANTS_DOC})",
                settings=False,
            )
        if isinstance(cause, ssl.SSLError) and "certificate required" in str(cause):
            return AccessProblem(
                f"{where}: the server wants a client certificate: add ssl_certfile and "
                f"ssl_keyfile to {client.setting}",
                settings=True,
            )
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _redis_tls(where: str, client: RedisClient, code: int) -> str:
    ca_fix = (
        f"set ssl_ca_certs=<the CA file> in {client.setting} (or ssl_ca_certs in its *_use_ssl "
        "option)"
    )
    return certificate_refused(where, "server", code, client.address, ca_fix)


def _redis_login(where: str, client: RedisClient, text: str) -> str:
    if "required" in text.lower() or "noauth" in text.lower():
        return f"{where} wants a password: put user:password in {client.setting}"
    return (
        f"{where} refused the login of user '{client.user}' (WRONGPASS: wrong password, or the "
        f"user is disabled): fix the user and password in {client.setting}; ACL GETUSER "
        f"{client.user} shows the user"
    )


def _noperm(where: str, client: RedisClient, text: str, grants: dict[str, str], while_: str) -> str:
    command = _NOPERM_COMMAND.search(text)
    if command is not None:
        name = command.group(1)
        return (
            f"{where} refused user '{client.user}' the command '{name}'{while_} (NOPERM): "
            f"ACL SETUSER {client.user} +{name} ({GRANTS_DOC})"
        )
    what = "channel" if "channel" in text else "key"
    rule = grants[what] or ("&<channel pattern>" if what == "channel" else "~<key pattern>")
    piped = _PIPELINE_COMMAND.search(text)  # redis-py names the command and its key
    if piped is not None and what == "key" and not grants["key"]:
        verb, key = piped.group(1).upper(), piped.group(2)
        return (
            f"{where} refused user '{client.user}' the key '{key}' ({verb}){while_} "
            f"(NOPERM): ACL SETUSER {client.user} ~<a pattern matching it> ({GRANTS_DOC})"
        )
    return (
        f"{where} refused user '{client.user}' a {what}{while_} (NOPERM): ACL SETUSER "
        f"{client.user} {rule} ({GRANTS_DOC}; ACL LOG names the {what})"
    )
