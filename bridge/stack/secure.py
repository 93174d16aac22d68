"""The secured local stack (``ckb stack up --secure``): what its servers and clients are given.

Kafka listens with ``SASL_SSL`` (SCRAM-SHA-512 users created when the storage is formatted; a
PEM keystore signed by the stack's own CA); its controller listener is SSL with client
certificates, so the broker's own certificate (``User:CN=ckb-server``) is its principal there.
The ``StandardAuthorizer`` refuses what no ACL allows; :mod:`bridge.stack.kafka_acls` has the
grants. Redis listens with TLS only (``port 0``, ``tls-port``) and ACL users
(:mod:`bridge.stack.redis_acl`). Passwords: :mod:`bridge.stack.credentials`, under
``<state>/secrets``; certificates under ``<state>/tls``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bridge.stack import kafka_acls, redis_acl
from bridge.stack.certificates import Certificates, certificates_in, ensure_certificates
from bridge.stack.credentials import Credentials, write_private
from bridge.stack.processes import StackError

SCRAM = "SCRAM-SHA-512"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
KAFKA_USERS = (kafka_acls.ADMIN_USER, kafka_acls.BRIDGE_USER, kafka_acls.REPLAY_USER)
MASK = "****"


@dataclass(frozen=True)
class SecureSetup:
    """The certificates and passwords of the secured stack in state directory ``root``."""

    root: Path

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.secrets_dir)

    @property
    def certificates(self) -> Certificates:
        return certificates_in(self.root / "tls")

    def prepare(self) -> Certificates:
        """Make what is missing: certificates and every password."""
        for user in KAFKA_USERS:
            self.kafka_password(user)
        for user in redis_acl.RULES:
            self.redis_password(user)
        return ensure_certificates(self.certificates.directory)

    def check(self, asked: bool, formatted: bool, extras: bool) -> None:
        """Make what is missing; StackError for a plain Kafka storage (its SCRAM users are made
        when it is formatted) or Flower, RabbitMQ or PostgreSQL, which a secured stack does
        not run."""
        if extras:
            raise StackError(
                "--secure runs Kafka and Redis only: drop --flower, --broker and --backend"
            )
        if asked and formatted and not self.secrets_dir.is_dir():
            raise StackError(
                f"{self.root} holds a plain stack; a secured one needs a fresh state dir: "
                "choose another --state-dir, or `ckb stack down` and delete that one"
            )
        self.prepare()

    def kafka_password(self, user: str) -> str:
        return self.credentials.password(f"kafka-{user}")

    def redis_password(self, user: str) -> str:
        return self.credentials.password(f"redis-{user}")

    def redact(self, text: str) -> str:
        """``text`` with every password of this stack replaced by ``****``."""
        for secret in self.credentials.known():
            text = text.replace(secret, MASK)
        return text

    # -- Kafka --------------------------------------------------------------------------------

    def kafka_properties(self, kafka_port: int, controller_port: int) -> str:
        """Broker properties appended to the plain template (later keys win in a properties
        file): the listeners, TLS, SASL and the authorizer."""
        certs = self.certificates
        admin = kafka_acls.ADMIN_USER
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{admin}" password="{self.kafka_password(admin)}";'
        )
        listeners = f"SASL_SSL://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}"
        lines = [
            "",
            "######################## Secured: ckb stack up --secure ########################",
            "# overrides the listeners above: clients on SASL_SSL, the controller on mutual TLS",
            f"listeners={listeners}",
            f"advertised.listeners={listeners}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            f"sasl.enabled.mechanisms={SCRAM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM}",
            f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={certs.server.bundle}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={certs.ca}",
            "listener.name.controller.ssl.client.auth=required",
            f"authorizer.class.name={STANDARD_AUTHORIZER}",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{admin};User:CN=ckb-server",
        ]  # fmt: skip
        return "\n".join(lines) + "\n"

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users."""
        arguments: list[str] = []
        for user in KAFKA_USERS:
            credential = f"{SCRAM}=[name={user},password={self.kafka_password(user)}]"
            arguments += ["--add-scram", credential]
        return arguments

    def kafka_client(self, user: str) -> dict[str, Any]:
        """librdkafka connection settings for ``user`` (without ``bootstrap.servers``)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": user,
            "sasl.password": self.kafka_password(user),
            "ssl.ca.location": str(self.certificates.ca),
        }

    # -- Redis --------------------------------------------------------------------------------

    def redis_arguments(self, port: int) -> list[str]:
        """redis-server arguments: TLS only on ``port``, the ACL file."""
        certs = self.certificates
        return [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
            "--aclfile", str(self.write_acl_file()),
        ]  # fmt: skip

    def write_acl_file(self) -> Path:
        passwords = {user: self.redis_password(user) for user in redis_acl.RULES}
        path = self.secrets_dir / "redis-users.acl"
        write_private(path, redis_acl.acl_file_text(passwords))
        return path

    def redis_url(self, port: int, user: str, db: int) -> str:
        """A ``rediss://`` URL for ``user`` (password included) that Celery and redis-py take."""
        password = quote(self.redis_password(user), safe="")
        ca = quote(str(self.certificates.ca))
        return (
            f"rediss://{user}:{password}@127.0.0.1:{port}/{db}"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        )

    def redis_client(self, user: str) -> dict[str, Any]:
        """``redis.Redis`` keyword arguments for ``user`` (host, port and db are the caller's)."""
        return {
            "username": user,
            "password": self.redis_password(user),
            "ssl": True,
            "ssl_ca_certs": str(self.certificates.ca),
        }


@dataclass(frozen=True)
class SecureClients:
    """How clients reach a running secured stack: who connects where, with what."""

    setup: SecureSetup
    kafka_bootstrap: str
    redis_port: int

    def kafka(self, user: str = kafka_acls.BRIDGE_USER) -> dict[str, Any]:
        """librdkafka settings for ``user``, ``bootstrap.servers`` included."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.setup.kafka_client(user)}

    def redis_url(self, user: str, db: int) -> str:
        return self.setup.redis_url(self.redis_port, user, db)

    def bridge_settings(self) -> dict[str, Any]:
        """The sections of a bridge config for the least-privilege users (passwords included)."""
        user = redis_acl.BRIDGE_USER
        return {
            "kafka": {
                "bootstrap_servers": self.kafka_bootstrap,
                "consumer": self.setup.kafka_client(kafka_acls.BRIDGE_USER),
            },
            "celery": {
                "broker_url": self.redis_url(user, 0),
                "result_backend": self.redis_url(user, 1),
            },
        }

    def worker_env(self) -> dict[str, str]:
        """The ``CKB_CELERY__*`` variables of a worker (``tasks.celeryconfig``)."""
        user = redis_acl.WORKER_USER
        return {
            "CKB_CELERY__BROKER_URL": self.redis_url(user, 0),
            "CKB_CELERY__RESULT_BACKEND": self.redis_url(user, 1),
        }

    @property
    def bridge_file(self) -> Path:
        return self.setup.secrets_dir / "bridge.yaml"

    @property
    def worker_file(self) -> Path:
        return self.setup.secrets_dir / "worker.env"

    @property
    def replay_file(self) -> Path:
        return self.setup.secrets_dir / "replay.yaml"

    def replay_settings(self) -> dict[str, Any]:
        """The ``kafka`` section for ``ckb dlq replay`` as its own least-privilege user."""
        consumer = self.setup.kafka_client(kafka_acls.REPLAY_USER)
        return {"kafka": {"bootstrap_servers": self.kafka_bootstrap, "consumer": consumer}}

    def write_files(self) -> None:
        """``bridge.yaml`` (the bridge's sections) and ``worker.env``, both 0600."""
        import yaml

        header = "# ckb stack up --secure: the bridge's connection settings (secret: 0600)\n"
        body = yaml.safe_dump(self.bridge_settings(), sort_keys=False)
        write_private(self.bridge_file, header + body)
        replay = yaml.safe_dump(self.replay_settings(), sort_keys=False)
        write_private(
            self.replay_file, "# ckb dlq replay's kafka section (secret: 0600)\n" + replay
        )
        lines = [f"{name}='{value}'" for name, value in self.worker_env().items()]
        write_private(self.worker_file, "\n".join(lines) + "\n")

    def summary(self) -> str:
        """What ``ckb stack up --secure`` prints: the settings with every password masked,
        and where the complete files are."""
        import yaml

        shown = self.setup.redact(yaml.safe_dump(self.bridge_settings(), sort_keys=False))
        return (
            f"{shown}"
            f"# passwords ({MASK} above) are in {self.setup.secrets_dir}/*.password (0600)\n"
            f"# complete bridge settings: {self.bridge_file} (merge into your config)\n"
            f"# a worker: set -a; . {self.worker_file}; set +a; celery -A tasks worker\n"
            f"# ckb dlq replay as ckb-replay: the kafka section of {self.replay_file}\n"
            f"# topics: sources {kafka_acls.SOURCE_PREFIX}*, dead letters "
            f"{kafka_acls.DLQ_PREFIX}* (set dlq_topic), groups {kafka_acls.GROUP_PREFIX}*\n"
        )
