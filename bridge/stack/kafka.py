"""A single-node Apache Kafka broker (KRaft, combined broker + controller) run from Maven jars."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bridge.stack.credentials import write_private
from bridge.stack.kafka_acls import ADMIN_USER, apply_acls, stack_bindings
from bridge.stack.paths import (
    DEFAULT_KAFKA_VERSION,
    StatePaths,
    cache_complete,
    find_kafka_config_dir,
    kafka_cache_dir,
    render_template,
    write_cache_marker,
)
from bridge.stack.processes import (
    LOCALHOST,
    StackError,
    file_lock,
    format_tails,
    is_running,
    port_accepts,
    read_pid,
    remove_pid,
    run_tool,
    spawn_detached,
    terminate,
    wait_port_free,
    write_pid,
)
from bridge.stack.secure import SecureSetup

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

MIN_JAVA = 17
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
MAVEN_TIMEOUT = 900.0
NODE_ID = 1
BROKER_JVM_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxDirectMemorySize=256m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
TOOL_JVM_OPTS = ("-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def java_major_version(version_output: str) -> int | None:
    """The major version from ``java -version`` output (``1.8.0`` -> 8, ``17.0.15`` -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, checked to be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    home_java = Path(java_home) / "bin" / "java" if java_home else None
    java = str(home_java) if home_java and home_java.is_file() else shutil.which("java")
    fix = "Install Java 17+ (e.g. sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
    if java is None:
        raise StackError(f"Java not found (no $JAVA_HOME/bin/java, no java on PATH). {fix}")
    output = run_tool([java, "-version"], f"{java} -version", fix, timeout=60)
    major = java_major_version(output)
    if major is None or major < MIN_JAVA:
        raise StackError(f"Kafka 4 needs Java {MIN_JAVA}+, {java} is {major or 'unknown'}. {fix}")
    return java


def find_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) not found on PATH; it downloads the Kafka jars once. "
            "Install it with: sudo apt-get install maven"
        )
    return mvn


def ensure_kafka_jars(
    version: str = DEFAULT_KAFKA_VERSION,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """The directory of Kafka's runtime jars, resolved through Maven on first use."""
    cache = kafka_cache_dir(version) if cache_dir is None else cache_dir
    if not cache_complete(cache):
        with file_lock(cache.parent / f".{cache.name}.lock"):
            if not cache_complete(cache):
                _resolve_jars(cache, version, progress or log.info)
    return cache / "libs"


def _resolve_jars(cache: Path, version: str, progress: Progress) -> None:
    mvn = find_maven()
    progress(f"downloading Kafka {version} jars with Maven into {cache} (first run only)")
    cache.mkdir(parents=True, exist_ok=True)
    pom = cache / "pom.xml"
    shutil.copyfile(find_kafka_config_dir() / "pom.xml", pom)
    partial = cache / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    argv += [f"-DoutputDirectory={partial}", "-DincludeScope=runtime", f"-Dkafka.version={version}"]
    fix = "Check network access to Maven Central (or your ~/.m2/settings.xml mirror) and retry."
    run_tool(argv, "resolving the Kafka jars with Maven", fix, timeout=MAVEN_TIMEOUT)
    jars = sorted(p.name for p in partial.glob("*.jar"))
    if f"kafka_2.13-{version}.jar" not in jars:
        raise StackError(f"Maven finished but kafka_2.13-{version}.jar is missing in {partial}")
    libs = cache / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    write_cache_marker(cache, jars)
    progress(f"Kafka jars ready ({len(jars)} jars)")


def new_cluster_id() -> str:
    """A random Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like a CLI flag
            return cid


def render_server_properties(
    template: str, kafka_port: int, controller_port: int, log_dir: Path
) -> str:
    values = {
        "kafka_port": kafka_port,
        "controller_port": controller_port,
        "log_dir": log_dir,
        "node_id": NODE_ID,
    }
    return render_template(template, values)


def is_formatted(data_dir: Path) -> bool:
    return (data_dir / "meta.properties").is_file()


@dataclass(frozen=True)
class KafkaNode:
    """The broker of one state directory."""

    paths: StatePaths
    kafka_port: int
    controller_port: int
    version: str = DEFAULT_KAFKA_VERSION
    #: SASL_SSL, ACLs and the users of ``ckb stack up --secure``; None: plaintext
    secure: SecureSetup | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.kafka_port}"

    @property
    def tokens(self) -> tuple[str, ...]:
        return (KAFKA_MAIN, str(self.paths.kafka_properties))

    def pid(self) -> int | None:
        pid = read_pid(self.paths.kafka_pid)
        return pid if is_running(pid, self.tokens) else None

    def running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether the broker answers a metadata request (and lists itself)."""
        if not port_accepts(self.kafka_port):
            return False
        client = AdminClient(
            {**self.admin_settings(), "bootstrap.servers": self.bootstrap}, logger=log
        )
        try:
            metadata = client.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return bool(metadata.brokers)

    def start(self, progress: Progress | None = None) -> int:
        """Prepare config and storage, start the broker, wait until it answers; its pid."""
        report = progress or log.info
        java = find_java()
        libs = ensure_kafka_jars(self.version, report)
        config_dir = find_kafka_config_dir()
        self._write_properties(config_dir)
        if not is_formatted(self.paths.kafka_data):
            report("formatting Kafka storage (KRaft, standalone controller)")
            self._format(java, libs, config_dir)
        report(f"starting Kafka {self.version} on {self.bootstrap}")
        argv = self._command(java, libs, config_dir, KAFKA_MAIN, BROKER_JVM_OPTS)
        pid = spawn_detached(
            [*argv, str(self.paths.kafka_properties)],
            self.paths.kafka_stdout_log,
            cwd=self.paths.kafka_dir,
        )
        write_pid(self.paths.kafka_pid, pid)
        self.wait_ready(pid)
        if self.secure is not None:
            report("granting the Kafka ACLs of the bridge and replay users")
            config = {**self.admin_settings(), "bootstrap.servers": self.bootstrap}
            apply_acls(config, stack_bindings())
        report(f"Kafka ready on {self.bootstrap}")
        return pid

    def admin_settings(self) -> dict[str, str]:
        """How the stack's own admin client connects (the super user on a secured stack)."""
        return {} if self.secure is None else self.secure.kafka_client(ADMIN_USER)

    def wait_ready(self, pid: int, timeout: float = READY_TIMEOUT) -> None:
        """Wait for a metadata answer; stop the broker and raise StackError when none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_running(pid, self.tokens):
                remove_pid(self.paths.kafka_pid)
                raise self._error("Kafka exited during startup")
            if self.answers(timeout=2.0):
                return
            time.sleep(0.25)
        self.stop()
        raise self._error(f"Kafka did not answer on {self.bootstrap} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        terminate(read_pid(self.paths.kafka_pid), self.tokens, STOP_TIMEOUT, kill=kill)
        remove_pid(self.paths.kafka_pid)
        wait_port_free(self.kafka_port, timeout=10.0)

    def log_tail(self, lines: int = 40) -> str:
        logs = [self.paths.kafka_stdout_log, self.paths.kafka_server_log]
        return format_tails(logs, lines)

    def _error(self, what: str) -> StackError:
        return StackError(
            f"{what}. Check the logs in {self.paths.logs}; if the storage is damaged, "
            f"`ckb stack down` and delete {self.paths.kafka_data}.\n{self.log_tail()}"
        )

    def _write_properties(self, config_dir: Path) -> None:
        template = (config_dir / "server.properties").read_text()
        text = render_server_properties(
            template, self.kafka_port, self.controller_port, self.paths.kafka_data
        )
        self.paths.kafka_data.mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        if self.secure is None:
            self.paths.kafka_properties.write_text(text)
        else:  # the inter-broker password is in it
            text += self.secure.kafka_properties(self.kafka_port, self.controller_port)
            write_private(self.paths.kafka_properties, text)

    def _format(self, java: str, libs: Path, config_dir: Path) -> None:
        argv = self._command(java, libs, config_dir, STORAGE_TOOL, TOOL_JVM_OPTS)
        props = str(self.paths.kafka_properties)
        argv += ["format", "--standalone", "-t", new_cluster_id(), "-c", props]
        fix = f"Delete {self.paths.kafka_data} and retry."
        if self.secure is None:
            run_tool(argv, "formatting Kafka storage", fix, timeout=180)
            return
        try:  # the users' passwords are arguments: never in the error
            run_tool([*argv, *self.secure.scram_arguments()], "formatting Kafka storage", fix, 180)
        except StackError as exc:
            raise StackError(self.secure.redact(str(exc))) from None

    def _command(
        self, java: str, libs: Path, config_dir: Path, main: str, jvm_opts: tuple[str, ...]
    ) -> list[str]:
        return [
            java,
            *jvm_opts,
            f"-Dlog4j2.configurationFile={config_dir / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.paths.logs}",
            "-cp",
            f"{libs}/*",
            main,
        ]
