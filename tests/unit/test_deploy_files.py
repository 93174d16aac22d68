"""Offline checks of the deployment files: Dockerfile, docker-compose.yml, Prometheus rules,
the Grafana dashboard and the Kubernetes manifests.

No Docker engine, no cluster and no network are needed; every check runs against what the dev
dependencies ship:

- docker-compose.yml against the Compose Specification schema vendored by check-jsonschema;
- Kubernetes objects against the Kubernetes JSON schemas shipped by kubernetes-validate
  (strict: unknown fields fail); KEDA objects have no schema there and get structural checks;
- the Dockerfile through Docker's own parser (the ``dockerfile`` package), the wheel built by
  hatchling from exactly what the Dockerfile copies, and its HEALTHCHECK run against a local
  HTTP server;
- PromQL through a PromQL parser, and every ``ckb_*`` name and label against the metrics
  contract (DESIGN.md);
- the bridge configs of compose and the ConfigMap through the bridge's own settings model.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import kubernetes_validate
import promql_parser
import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main as ckb_main
from bridge.loop import SHUTDOWN_OVERHEAD
from bridge.routing import Router
from bridge.secrets import is_secret_key, mask_url
from bridge.settings import MetricsSettings, Settings, load_settings
from bridge.stack.redis_acl import BRIDGE_USER, WORKER_USER
from tasks.celeryconfig import settings_from_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_BRIDGE = REPO / "config" / "compose-bridge.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS = REPO / "config" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "config" / "prometheus" / "alerts.test.yml"
GRAFANA = REPO / "config" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ckb.json"
DEPLOY = REPO / "deploy"
DESIGN = REPO.parent / "shared" / "DESIGN.md"

#: The metrics contract (DESIGN.md, "Metrics"): name → (type, labels).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "ckb_records_consumed_total": ("counter", frozenset({"topic", "partition"})),
    "ckb_tasks_dispatched_total": ("counter", frozenset({"topic", "task"})),
    "ckb_tasks_finished_total": ("counter", frozenset({"topic", "task", "outcome"})),
    "ckb_dlq_records_total": ("counter", frozenset({"topic", "reason"})),
    "ckb_inflight_records": ("gauge", frozenset({"topic", "partition"})),
    "ckb_oldest_inflight_age_seconds": ("gauge", frozenset({"topic", "partition"})),
    "ckb_committed_offset": ("gauge", frozenset({"topic", "partition"})),
    "ckb_consumer_lag_records": ("gauge", frozenset({"topic", "partition"})),
    "ckb_task_duration_seconds": ("histogram", frozenset({"topic", "task"})),
    "ckb_record_latency_seconds": ("histogram", frozenset({"topic"})),
    "ckb_rebalances_total": ("counter", frozenset({"event"})),
    "ckb_paused_partitions": ("gauge", frozenset()),
}
#: metrics the bridge exposes beyond DESIGN.md's table (issue 12: the dispatch window and
#: offset resets); documented in the README's metrics table
EXTRA_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "ckb_dispatch_window_tasks": ("gauge", frozenset({"queue"})),
    "ckb_queue_inflight_tasks": ("gauge", frozenset({"queue"})),
    "ckb_queue_finish_rate": ("gauge", frozenset({"queue"})),
    "ckb_offset_resets_total": ("counter", frozenset({"topic", "partition"})),
    "ckb_tasks_unobservable_total": ("counter", frozenset({"topic", "task"})),
    # issue 10: dead letters that always land
    "ckb_dlq_pending_records": ("gauge", frozenset({"dlq_topic", "state"})),
    "ckb_dlq_values_dropped_total": ("counter", frozenset({"dlq_topic"})),
    "ckb_dlq_producer_rebuilds_total": ("counter", frozenset()),
    "ckb_dlq_loops_stopped_total": ("counter", frozenset({"topic"})),
    # issue 13: rate limits
    "ckb_rate_limit_granted_total": ("counter", frozenset({"route"})),
    "ckb_rate_limit_wait_seconds_total": ("counter", frozenset({"route"})),
}
#: labels Prometheus adds to every scraped series
TARGET_LABELS = frozenset({"job", "instance"})
#: series that are not the bridge's but may appear in expressions
OTHER_SERIES = {"up": frozenset()}
CKB_NAME = re.compile(r"ckb_[a-z_]+")
K8S_NATIVE_KINDS = {"ConfigMap", "Secret", "Service", "Deployment", "NetworkPolicy"}
#: Kubernetes versions the manifests must validate against (oldest supported, newest shipped)
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


# == helpers ===========================================================================
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def seconds(duration: str | int | float) -> float:
    """``45s``, ``1m30s``, ``2m`` (Compose and Prometheus durations) → seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def allowed_series() -> dict[str, frozenset[str]]:
    """Every series name an expression may select, with the labels it carries."""
    names: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in CONTRACT.items():
        if kind == "histogram":
            names[f"{name}_bucket"] = labels | {"le"}
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
        else:
            names[name] = labels
    names.update(OTHER_SERIES)
    return {name: labels | TARGET_LABELS for name, labels in names.items()}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables so the query parses as plain PromQL."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def selectors(expr: Any) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(
        expr,
        pre_visit=lambda node: (
            found.append(node) if isinstance(node, promql_parser.VectorSelector) else None
        ),
    )
    return found


def selector_name(selector: Any) -> str | None:
    if selector.name:
        return str(selector.name)
    names = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    return str(names[0]) if names else None


def by_label_problems(expr: Any) -> list[str]:
    """``sum by (x)`` must group by labels the selected series have."""
    problems: list[str] = []
    series = allowed_series()

    def visit(node: Any) -> None:
        if not isinstance(node, promql_parser.AggregateExpr) or node.modifier is None:
            return
        if node.modifier.type != promql_parser.AggModifierType.By:
            return
        have: set[str] = set()
        for selector in selectors(node.expr):
            have |= series.get(selector_name(selector) or "", frozenset())
        problems.extend(
            f"groups by unknown label {label!r}"
            for label in node.modifier.labels
            if label not in have
        )

    promql_parser.walk(expr, pre_visit=visit)
    return problems


def promql_problems(expr_text: str) -> list[str]:
    """Why an expression does not fit the metrics contract (empty list: it does)."""
    text = grafana_to_promql(expr_text)
    try:
        expr = promql_parser.parse(text)
    except ValueError as exc:
        return [f"not valid PromQL: {exc}"]
    series = allowed_series()
    problems = [
        f"{name} is not a contract metric (or a histogram's _bucket/_sum/_count)"
        for name in CKB_NAME.findall(text)
        if name not in series
    ]
    for selector in selectors(expr):
        name = selector_name(selector)
        if name not in series:
            problems.append(f"selects unknown series {name!r}")
            continue
        problems.extend(
            f"{name} has no label {m.name!r}"
            for m in selector.matchers.matchers
            if m.name != "__name__" and m.name not in series[name]
        )
    return problems + by_label_problems(expr)


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for _, target in dashboard_targets(dashboard)]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query["query"] if isinstance(query, dict) else query
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", text))
    return exprs


def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def service_command(service: dict[str, Any]) -> list[str]:
    return [*service.get("entrypoint", []), *service.get("command", [])]


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path → container path of a service's ``./…`` bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[source] = target
    return mounts


def queues_of(settings: Settings) -> set[str]:
    return {route.queue or settings.celery.default_queue for route in settings.routes}


def queue_option(args: list[str]) -> set[str]:
    return set(args[args.index("-Q") + 1].split(","))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CKB_"):
            monkeypatch.delenv(name)


# == the metrics contract ==============================================================
def test_contract_matches_design_md() -> None:
    if not DESIGN.is_file():
        pytest.skip("shared/DESIGN.md is not beside this checkout")
    rows = re.findall(
        r"^\| `(ckb_[a-z_]+)` \| (\w+) \| ([^|]*)\|", DESIGN.read_text("utf-8"), re.MULTILINE
    )
    design = {
        name: (kind, frozenset(re.findall(r"\b[a-z]+\b", labels.split("(")[0])))
        for name, kind, labels in rows
    }
    assert design == CONTRACT


def test_contract_matches_the_bridge_metrics() -> None:
    """What the bridge's registry exposes: counters as <family>_total, histograms by base name."""
    metrics = pytest.importorskip("bridge.metrics")
    exposed = {
        (f"{family.name}_total" if family.type == "counter" else family.name, family.type)
        for family in metrics.PrometheusObserver().registry.collect()
        if family.name.startswith("ckb_")
    }
    expected = {**CONTRACT, **EXTRA_METRICS}
    assert exposed == {(name, kind) for name, (kind, _) in expected.items()}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(ckb_tasks_finish_total[5m])", "not a contract metric"),
        ("ckb_task_duration_seconds", "not a contract metric"),  # a histogram has no bare series
        ("rate(ckb_dlq_records_total_bucket[5m])", "not a contract metric"),
        ("sum by (reasons) (rate(ckb_dlq_records_total[5m]))", "unknown label 'reasons'"),
        ('ckb_inflight_records{queue="orders"}', "has no label 'queue'"),
        ('{__name__="ckb_lag"}', "not a contract metric"),
        ("sum(rate(ckb_records_consumed_total[5m])", "not valid PromQL"),
        ("node_load1", "unknown series 'node_load1'"),
    ],
)
def test_contract_check_catches_mistakes(expr: str, problem: str) -> None:
    problems = promql_problems(expr)
    assert any(problem in p for p in problems), problems


def test_contract_check_accepts_histogram_series_and_grafana_variables() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, topic) (rate(ckb_task_duration_seconds_bucket"
        '{topic=~"$topic"}[$__rate_interval]))) + sum(rate(ckb_task_duration_seconds_sum[5m]))'
        " / sum(rate(ckb_task_duration_seconds_count[5m]))"
    )
    assert promql_problems(expr) == []


# == Prometheus ========================================================================
def test_alert_rules_use_only_contract_metrics() -> None:
    rules = alert_rules(load_yaml(ALERTS))
    assert rules
    for rule in rules:
        assert promql_problems(rule["expr"]) == [], rule["alert"]


def test_a_wrong_metric_name_in_the_alert_rules_is_caught(tmp_path: Path) -> None:
    text = ALERTS.read_text("utf-8").replace("ckb_dlq_records_total", "ckb_dlq_total")
    rules = alert_rules(yaml.safe_load(text))
    assert any(promql_problems(rule["expr"]) for rule in rules)


def test_required_alerts_exist() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules(load_yaml(ALERTS))}
    lag = rules["CkbConsumerLagGrowing"]
    assert "deriv(ckb_consumer_lag_records[10m])" in lag["expr"]
    assert seconds(lag["for"]) == 600
    dlq = rules["CkbDeadLettersWritten"]
    assert "rate(ckb_dlq_records_total[5m])" in dlq["expr"]
    assert seconds(dlq["for"]) == 300
    stalled = rules["CkbConsumptionStalled"]["expr"]
    assert "ckb_consumer_lag_records" in stalled
    assert "ckb_records_consumed_total" in stalled
    assert 'up{job="ckb-bridge"}' in rules["CkbBridgeDown"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_prometheus_scrapes_the_compose_bridge_and_loads_the_mounted_rules() -> None:
    config = load_yaml(PROMETHEUS)
    services = compose()["services"]
    bridge_settings = load_settings(COMPOSE_BRIDGE)
    targets = [
        target
        for job in config["scrape_configs"]
        if job["job_name"] == "ckb-bridge"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"bridge:{bridge_settings.metrics.port}"]
    assert "bridge" in services
    mounted = bind_mounts(services["prometheus"])
    assert mounted["./config/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        source = next(src for src, dst in mounted.items() if dst == rule_file)
        assert (REPO / source).is_file()
    assert "ckb-bridge" in ALERTS.read_text("utf-8")  # the bridge-down rule's job label


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CKB_REQUIRE_PROMTOOL"),
    reason="promtool not installed (Debian: apt-get install prometheus); CI installs it",
)
def test_promtool_checks_and_unit_tests(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        PROMETHEUS.read_text("utf-8").replace("/etc/prometheus/", f"{ALERTS.parent}/")
    )
    subprocess.run(["promtool", "check", "config", str(config)], check=True)
    subprocess.run(["promtool", "test", "rules", ALERTS_TEST.name], check=True, cwd=ALERTS.parent)


# == Grafana ===========================================================================
def test_dashboard_uses_only_contract_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    exprs = dashboard_expressions(dashboard)
    assert len(exprs) >= 10
    for expr in exprs:
        assert promql_problems(expr) == [], expr


def test_a_wrong_metric_name_in_the_dashboard_is_caught() -> None:
    text = DASHBOARD.read_text("utf-8").replace("ckb_paused_partitions", "ckb_partitions_paused")
    exprs = dashboard_expressions(json.loads(text))
    assert any("ckb_partitions_paused" in p for e in exprs for p in promql_problems(e))


def test_dashboard_has_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    exprs = " ".join(dashboard_expressions(dashboard))
    for needed in (
        "sum by (topic, partition) (ckb_consumer_lag_records",
        "ckb_inflight_records",
        "sum by (outcome) (rate(ckb_tasks_finished_total",
        "histogram_quantile(0.5, sum by (le) (rate(ckb_task_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(ckb_task_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, topic) (rate(ckb_record_latency_seconds_bucket",
        "sum by (reason) (rate(ckb_dlq_records_total",
        "ckb_paused_partitions",
        "sum by (event) (increase(ckb_rebalances_total",
    ):
        assert needed in exprs, needed


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["current"]["value"] == provisioned["datasources"][0]["uid"]
    for panel, target in dashboard_targets(dashboard):
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert target["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        legend = set(re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")))
        carried = set().union(
            *(allowed_series().get(n, set()) for n in CKB_NAME.findall(target["expr"]))
        )
        assert legend <= carried, (panel["title"], legend - carried)


def test_grafana_provisioning_matches_compose() -> None:
    services = compose()["services"]
    mounts = bind_mounts(services["grafana"])
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "ckb.yml")["providers"][0]
    assert mounts["./config/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./config/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# == bridge configs: the real settings validation ======================================
def configmap() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "configmap.yaml").read_text("utf-8")) if d]
    return next(d for d in docs if d["kind"] == "ConfigMap")


def configmap_settings(tmp_path: Path) -> Settings:
    path = tmp_path / "bridge.yaml"
    path.write_text(configmap()["data"]["bridge.yaml"], encoding="utf-8")
    return load_settings(path)


def test_compose_bridge_config_passes_settings_validation() -> None:
    settings = load_settings(COMPOSE_BRIDGE)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.celery.broker_url.startswith("redis://redis:6379/")
    assert settings.celery.result_backend.startswith("redis://redis:6379/")
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9108)


def dockerfile_env() -> dict[str, str]:
    found: dict[str, str] = {}
    for command in final_stage():
        if command.cmd.upper() == "ENV":
            pairs = command.value
            found.update(zip(pairs[::2], pairs[1::2], strict=True))
    return found


def test_the_package_binds_loopback_and_containers_bind_explicitly() -> None:
    """The ops port answers anyone who can reach it: only a container opens it to its network."""
    assert MetricsSettings().host == "127.0.0.1"
    # the demo and development config runs on the host: loopback
    assert load_yaml(REPO / "config" / "bridge.yaml")["metrics"]["host"] == "127.0.0.1"
    # a container must listen on its interface (published port, other containers, probes):
    # the image says so, and so do the configs mounted into compose and Kubernetes
    assert dockerfile_env()["CKB_METRICS__HOST"] == "0.0.0.0"
    assert load_yaml(COMPOSE_BRIDGE)["metrics"]["host"] == "0.0.0.0"
    assert yaml.safe_load(configmap()["data"]["bridge.yaml"])["metrics"]["host"] == "0.0.0.0"
    # and compose publishes it on the host's loopback only
    port = load_yaml(COMPOSE_BRIDGE)["metrics"]["port"]
    assert compose()["services"]["bridge"]["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_configmap_config_passes_settings_validation(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    assert settings.metrics.enabled
    assert settings.metrics.port == 9108


def test_settings_validation_rejects_a_drifted_config(tmp_path: Path) -> None:
    broken = tmp_path / "bridge.yaml"
    broken.write_text(
        COMPOSE_BRIDGE.read_text("utf-8").replace("shutdown_grace:", "shutdown_grace_s:"), "utf-8"
    )
    with pytest.raises(Exception, match="shutdown_grace_s"):
        load_settings(broken)


@pytest.mark.parametrize("source", ["compose", "configmap"])
def test_no_dead_letter_topic_is_consumed_again(source: str, tmp_path: Path) -> None:
    settings = (
        load_settings(COMPOSE_BRIDGE) if source == "compose" else configmap_settings(tmp_path)
    )
    router = Router(settings.routes)
    for route in settings.routes:
        assert not (route.is_pattern and route.dlq_topic is None), (
            f"{route.topic}: a pattern route needs an explicit dlq_topic outside the pattern"
        )
        dlq = route.dlq_for(route.topic)
        assert router.match(dlq) is None, f"{dlq} is routed: dead letters would be re-processed"


def test_configmap_holds_no_secrets(tmp_path: Path) -> None:
    def walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
        yield key, value
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, str(k))
        elif isinstance(value, list):
            for item in value:
                yield from walk(item, key)

    config = yaml.safe_load(configmap()["data"]["bridge.yaml"])
    for key, value in walk(config):
        assert not is_secret_key(key), f"{key} belongs in the Secret"
        if isinstance(value, str):
            assert mask_url(value) == value, f"{key} carries a password"


# == Dockerfile and .dockerignore ======================================================
def dockerfile_commands() -> list[Any]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages() -> list[list[Any]]:
    found: list[list[Any]] = []
    for command in dockerfile_commands():
        if command.cmd.upper() == "FROM":
            found.append([])
        if found:
            found[-1].append(command)
    return found


def final_stage() -> list[Any]:
    return stages()[-1]


def instruction(commands: list[Any], name: str) -> Any:
    found = [c for c in commands if c.cmd.upper() == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def test_dockerfile_runtime_stage() -> None:
    stage = final_stage()
    assert instruction(stage, "FROM").value == ("python:3.11-slim",)
    user = instruction(stage, "USER").value[0].split(":")
    assert user[0].isdigit() and int(user[0]) > 0, "a numeric non-root user (runAsNonRoot)"
    entrypoint = instruction(stage, "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("ckb",)
    cmd = instruction(stage, "CMD")
    assert cmd.json and cmd.value == ("run", "-c", "/etc/ckb/bridge.yaml")
    assert instruction(stage, "STOPSIGNAL").value == ("SIGTERM",)
    assert instruction(stage, "EXPOSE").value == ("9108",)
    healthcheck = instruction(stage, "HEALTHCHECK")
    assert healthcheck.value[0] == "CMD" and healthcheck.value[1] == "python"
    assert "/healthz" in healthcheck.value[-1]


def test_dockerfile_cmd_parses_with_the_real_cli() -> None:
    argv = list(instruction(final_stage(), "CMD").value)
    with ckb_main.make_context("ckb", list(argv)) as context:
        name, command, rest = ckb_main.resolve_command(context, argv)
        assert name == "run" and command is not None
        run = command.make_context(name, rest, parent=context)
        assert run.params["config_path"] == Path("/etc/ckb/bridge.yaml")
    result = CliRunner().invoke(ckb_main, ["check-config", "-c", str(COMPOSE_BRIDGE)])
    assert result.exit_code == 0, result.output


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches a dir's content."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text("utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_copies(commands: list[Any] | None = None) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY instructions that read the build context."""
    copies = []
    for command in dockerfile_commands() if commands is None else commands:
        if command.cmd.upper() == "COPY" and not any(f.startswith("--from") for f in command.flags):
            *sources, destination = command.value
            copies.append((sources, destination))
    return copies


def context_files(source: str) -> list[str]:
    """The files under ``source`` that reach the build context (.dockerignore applied)."""
    path = REPO / source
    found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    relative = [p.relative_to(REPO).as_posix() for p in found]
    patterns = dockerignore_patterns()
    return sorted(r for r in relative if not dockerignored(r, patterns))


def copy_like_docker(root: Path, source: str, destination: str) -> None:
    for file in context_files(source):
        if file == source:  # a file: into a directory (…/) or onto a name
            target = root / destination / Path(file).name
            target = target if destination.endswith("/") else root / destination
        else:  # a directory: its content
            target = root / destination / Path(file).relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / file, target)


def test_dockerignore_keeps_what_the_build_needs_and_drops_the_rest() -> None:
    patterns = dockerignore_patterns()
    for needed in ("pyproject.toml", "README.md", "bridge/__init__.py", "tasks/__init__.py"):
        assert not dockerignored(needed, patterns), needed
    for sources, _ in build_copies():
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source, patterns), f"{source} is copied but .dockerignored"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/unit/test_offsets.py", "deploy/x"):
        assert dockerignored(dropped, patterns), dropped
    assert dockerignored("bridge/__pycache__/cli.cpython-311.pyc", patterns)


def test_dockerignore_matcher_follows_last_match_wins() -> None:
    assert dockerignored("a/b.txt", ["*"])
    assert not dockerignored("a/b.txt", ["*", "!a/"])
    assert dockerignored("a/__pycache__/x.pyc", ["*", "!a/", "**/__pycache__"])


def test_wheel_builds_from_exactly_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """The build stage's ``pip install ".[otel,postgres]"``, offline: hatchling on the copied
    files only (the extras the compose profiles and tracing need are in the image)."""
    build_stage = stages()[0]
    runs = [" ".join(c.value) for c in build_stage if c.cmd.upper() == "RUN"]
    assert any('pip install ".[otel,postgres]"' in run for run in runs), runs
    src = tmp_path / "src"
    for sources, destination in build_copies(build_stage):
        for source in sources:
            copy_like_docker(src, source, destination)
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
    )
    names = zipfile.ZipFile(next(out.glob("*.whl"))).namelist()
    for needed in ("bridge/cli.py", "tasks/celeryconfig.py", "bridge/stack/kafka_config/pom.xml"):
        assert needed in names, needed


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run_healthcheck(port: int) -> int:
    command = instruction(final_stage(), "HEALTHCHECK").value[1:]
    env = {**os.environ, "CKB_METRICS__PORT": str(port)}
    return subprocess.run(list(command), env=env, timeout=30, check=False).returncode


def test_healthcheck_command_follows_healthz() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Health.status = 200
        assert run_healthcheck(port) == 0
        _Health.status = 503
        assert run_healthcheck(port) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck(port) != 0  # nothing listening


# == docker-compose.yml ================================================================
def compose_schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = compose_schema_check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("condition: service_healthy", "condition: service_ready"),
        ("stop_grace_period: 60s", "stop_grace_periods: 60s"),
        ("healthcheck:\n", "health_check:\n"),
    ],
)
def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path, old: str, new: str) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text("utf-8")
    assert old in text
    broken.write_text(text.replace(old, new, 1), "utf-8")
    assert compose_schema_check(broken).returncode != 0


def test_compose_references_existing_files() -> None:
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            context = REPO / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for source in bind_mounts(service):
            assert (REPO / source).exists(), f"{name}: {source} does not exist"


def test_compose_services() -> None:
    services = compose()["services"]
    for name, service in services.items():  # the schema takes any string here, Compose does not
        assert re.fullmatch(
            r"no|always|unless-stopped|on-failure(:\d+)?", service.get("restart", "no")
        ), name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis:")
    for dependency in ("kafka", "redis"):
        assert "test" in services[dependency]["healthcheck"]
        assert services["bridge"]["depends_on"][dependency]["condition"] == "service_healthy"
    assert bind_mounts(services["bridge"]) == {
        "./config/compose-bridge.yaml": "/etc/ckb/bridge.yaml"
    }
    settings = load_settings(COMPOSE_BRIDGE)
    assert (
        seconds(services["bridge"]["stop_grace_period"])
        > settings.limits.shutdown_grace + SHUTDOWN_OVERHEAD
    )
    assert (
        f"127.0.0.1:{settings.metrics.port}:{settings.metrics.port}" in services["bridge"]["ports"]
    )
    kafka_host = settings.kafka.bootstrap_servers
    assert (
        f"PLAINTEXT://{kafka_host}"
        in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )


def test_compose_worker_and_flower_use_the_image_and_the_routes_queues() -> None:
    services = compose()["services"]
    settings = load_settings(COMPOSE_BRIDGE)
    for name in ("bridge", "worker", "flower"):
        assert services[name]["image"] == services["bridge"]["image"]
        env = services[name]["environment"]
        assert interpolate(env["CKB_CELERY__BROKER_URL"], {}) == settings.celery.broker_url
        backend = interpolate(env["CKB_CELERY__RESULT_BACKEND"], {})
        assert backend == settings.celery.result_backend
    worker = service_command(services["worker"])
    assert worker[:4] == ["celery", "-A", "tasks", "worker"]
    assert queue_option(worker) == queues_of(settings)
    flower = service_command(services["flower"])
    assert flower[:4] == ["celery", "-A", "tasks", "flower"]
    assert "--port=5555" in flower and "127.0.0.1:5555:5555" in services["flower"]["ports"]


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` (the only form the compose file uses), resolved."""

    def one(match: re.Match[str]) -> str:
        return variables.get(match["name"]) or match["default"]

    return re.sub(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}", one, value)


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text("utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


PROFILES = {
    # env file: (profile and service, the URL it sets, how that URL starts, its host:port)
    "rabbitmq": ("CKB_CELERY__BROKER_URL", "amqp://", "@rabbitmq:5672/"),
    "postgres": ("CKB_CELERY__RESULT_BACKEND", "db+postgresql://", "@postgres:5432/"),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_profile_switches_every_celery_client_to_its_server(tmp_path: Path, profile: str) -> None:
    """``docker compose --env-file config/compose/<profile>.env up``: the profile starts its
    server, and the bridge, the workers and Flower all use it."""
    variable, scheme, where = PROFILES[profile]
    variables = env_file(REPO / "config" / "compose" / f"{profile}.env")
    services = compose()["services"]
    assert variables["COMPOSE_PROFILES"] == profile
    assert sorted(n for n, s in services.items() if s.get("profiles")) == sorted(PROFILES)
    server = services[profile]
    assert server["profiles"] == [profile]
    assert "test" in server["healthcheck"]
    user = next(v for k, v in server["environment"].items() if k.endswith("_USER"))
    for name in ("bridge", "worker", "flower"):
        env = services[name]["environment"]
        url = interpolate(env[variable], variables)
        assert url.startswith(f"{scheme}{user}:") and where in url, (name, url)
        dependency = services[name]["depends_on"][profile]
        assert dependency == {"condition": "service_healthy", "required": False}, name
        others = {k: interpolate(v, {}) for k, v in env.items() if k != variable}
        assert all("${" not in v for v in others.values()), "the other URL keeps its default"
    config = tmp_path / "bridge.yaml"
    config.write_text(COMPOSE_BRIDGE.read_text("utf-8"), "utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, interpolate(services["bridge"]["environment"][variable], variables))
        settings = load_settings(config)
    assert str(getattr(settings.celery, variable.removeprefix("CKB_CELERY__").lower())).startswith(
        scheme
    )


def test_celery_commands_exist_in_the_installed_celery() -> None:
    """The worker/flower commands and the ``inspect ping`` probe parse with the real CLI."""
    for args, options in (
        (["worker"], ("-Q, --queues", "-c, --concurrency", "-l, --loglevel")),
        (["inspect", "ping"], ("-d, --destination", "-t, --timeout")),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", *args, "--help"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        for option in options:
            assert option in result.stdout, (args, option)


# == Kubernetes ========================================================================
def manifests() -> dict[Path, list[dict[str, Any]]]:
    return {
        path: [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
        for path in sorted(DEPLOY.rglob("*.yaml"))
    }


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for docs in manifests().values()
        for doc in docs
        if doc.get("kind") == kind
    }


def container(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects("Deployment")[deployment]["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return dict(spec["containers"][0])


def secret_example() -> dict[str, str]:
    secret = objects("Secret")["ckb-secrets"]
    return dict(secret["stringData"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_match_the_kubernetes_schemas(version: str) -> None:
    validated = set()
    for path, docs in manifests().items():
        for doc in docs:
            if doc["kind"] in K8S_NATIVE_KINDS:
                kubernetes_validate.validate(doc, version, strict=True)
                validated.add(doc["kind"])
            else:
                assert doc["apiVersion"].startswith(("keda.sh/", "kustomize.")), path
    assert validated == K8S_NATIVE_KINDS


def test_kubernetes_schema_check_rejects_a_broken_deployment() -> None:
    deployment = json.loads(json.dumps(objects("Deployment")["ckb-bridge"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = json.loads(json.dumps(objects("Deployment")["ckb-bridge"]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_the_core_manifests() -> None:
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    listed = set(kustomization["resources"])
    for name in listed:
        assert (DEPLOY / name).is_file(), name
    core = {
        p.name
        for p, docs in manifests().items()
        if p.parent == DEPLOY and docs and docs[0]["kind"] in K8S_NATIVE_KINDS - {"Secret"}
    }
    assert listed == core
    assert "secret.example.yaml" not in listed


def test_bridge_deployment(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    deployment = objects("Deployment")["ckb-bridge"]
    pod = deployment["spec"]["template"]
    bridge = container("ckb-bridge")
    port = {p["name"]: p["containerPort"] for p in bridge["ports"]}["metrics"]
    assert port == settings.metrics.port
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert (
        pod["spec"]["terminationGracePeriodSeconds"]
        > settings.limits.shutdown_grace + SHUTDOWN_OVERHEAD
    )
    assert {"requests", "limits"} <= set(bridge["resources"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    config_path = bridge["args"][bridge["args"].index("-c") + 1]
    mount = next(m for m in bridge["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert config_path == f"{mount['mountPath']}/{volume['configMap']['items'][0]['path']}"
    assert volume["configMap"]["name"] == configmap()["metadata"]["name"]


def network_policy_problems(policy: dict[str, Any], pod_labels: dict[str, str]) -> list[str]:
    """What would let more than Prometheus reach the bridge's port (kubelet probes come from
    the node, which a NetworkPolicy always admits)."""
    spec = policy["spec"]
    problems = []
    selected = spec["podSelector"].get("matchLabels", {})
    if not selected or any(pod_labels.get(k) != v for k, v in selected.items()):
        problems.append("podSelector does not select the bridge pods")
    if "Ingress" not in spec.get("policyTypes", []):
        problems.append("policyTypes lacks Ingress: nothing is restricted")
    for rule in spec.get("ingress", []):
        if not rule.get("from"):
            problems.append("a rule admits every source")
        for peer in rule.get("from", []):
            if "ipBlock" in peer or not peer.get("podSelector", {}).get("matchLabels"):
                problems.append(f"a rule admits more than labelled pods: {peer}")
        ports = rule.get("ports", [])
        if not ports or any(p.get("port") not in ("metrics", 9108) for p in ports):
            problems.append(f"a rule admits ports other than metrics: {ports}")
    return problems


def test_network_policy_admits_only_prometheus_to_the_metrics_port() -> None:
    kustomization = load_yaml(DEPLOY / "kustomization.yaml")
    assert "network-policy.yaml" in kustomization["resources"]
    policy = objects("NetworkPolicy")["ckb-bridge"]
    pod_labels = objects("Deployment")["ckb-bridge"]["spec"]["template"]["metadata"]["labels"]
    assert network_policy_problems(policy, pod_labels) == []
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer
    ports = {p["name"]: p["containerPort"] for p in container("ckb-bridge")["ports"]}
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert list(ports) == ["metrics"]  # the bridge serves no other port
    # the workers serve nothing: the policy leaves them alone
    worker = objects("Deployment")["ckb-worker"]["spec"]["template"]["metadata"]["labels"]
    assert network_policy_problems(policy, worker) != []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s["ingress"][0].pop("from"), "every source"),
        (lambda s: s["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "more than"),
        (lambda s: s["ingress"][0]["from"][0].update(podSelector={}), "more than"),
        (lambda s: s["ingress"][0].pop("ports"), "other than metrics"),
        (lambda s: s.update(policyTypes=["Egress"]), "lacks Ingress"),
        (lambda s: s["podSelector"].update(matchLabels={"app": "other"}), "does not select"),
    ],
)
def test_network_policy_check_catches_mistakes(change: Any, problem: str) -> None:
    policy = json.loads(json.dumps(objects("NetworkPolicy")["ckb-bridge"]))
    pod_labels = objects("Deployment")["ckb-bridge"]["spec"]["template"]["metadata"]["labels"]
    change(policy["spec"])
    assert any(problem in p for p in network_policy_problems(policy, pod_labels))


def secret_env(name: str) -> dict[str, str]:
    """The container's environment with the example Secret's values filled in."""
    values = secret_example()
    env = {}
    for item in container(name)["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "ckb-secrets"
            env[item["name"]] = values[ref["key"]]
        else:
            assert not is_secret_key(item["name"]) and "URL" not in item["name"], item["name"]
            env[item["name"]] = item["value"]
    return env


def test_secrets_reach_the_bridge_through_ckb_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = secret_env("ckb-bridge")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = configmap_settings(tmp_path)
    values = secret_example()
    assert settings.kafka.consumer["sasl.username"] == values["kafka-sasl-username"]
    assert settings.kafka.consumer["sasl.password"] == values["kafka-sasl-password"]
    assert settings.kafka.consumer["security.protocol"] == "SASL_SSL"  # the ConfigMap's, kept
    assert settings.celery.broker_url == values["redis-broker-url"]
    assert settings.celery.result_backend == values["redis-result-backend"]


def test_a_misspelt_override_fails_the_settings_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKB_CELERY__BROKER_URI", "redis://x")
    with pytest.raises(Exception, match="broker_uri"):
        configmap_settings(tmp_path)


def test_worker_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = container("ckb-worker")
    assert worker["command"] == ["celery"]
    assert worker["args"][:3] == ["-A", "tasks", "worker"]
    assert queue_option(worker["args"]) == queues_of(configmap_settings(tmp_path))
    probe = worker["livenessProbe"]["exec"]["command"]
    assert "celery -A tasks inspect ping" in probe[-1]
    for name, value in secret_env("ckb-worker").items():
        monkeypatch.setenv(name, value)
    celery = settings_from_env()
    # the workers connect as their own Redis ACL user, the bridge as its own
    assert celery["broker_url"] == secret_example()["worker-redis-broker-url"]
    assert celery["result_backend"] == secret_example()["worker-redis-result-backend"]
    users = {
        urlsplit(secret_example()[key]).username
        for key in ("redis-broker-url", "redis-result-backend")
    }
    assert users == {BRIDGE_USER}
    assert urlsplit(celery["broker_url"]).username == WORKER_USER
    grace = objects("Deployment")["ckb-worker"]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] >= 60


def test_secret_example_holds_only_placeholders() -> None:
    text = (DEPLOY / "secret.example.yaml").read_text("utf-8")
    assert text.startswith("# EXAMPLE ONLY")
    not_secret = {"keda-kafka-sasl", "keda-kafka-tls"}
    for key, value in secret_example().items():
        assert key in not_secret or "CHANGE-ME" in value, key


# == KEDA (no Kubernetes schema: structural checks after the CRDs' required fields) ======
def keda(kind: str) -> dict[str, dict[str, Any]]:
    found = objects(kind)
    for obj in found.values():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
    return found


def keda_problems(scaled: dict[str, Any]) -> list[str]:
    """What the ScaledObject CRD and KEDA would reject, or what points nowhere."""
    spec = scaled["spec"]
    problems = []
    if spec.get("scaleTargetRef", {}).get("name") not in objects("Deployment"):
        problems.append("scaleTargetRef.name is not a Deployment in deploy/")
    if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 0):
        problems.append("needs 1 <= minReplicaCount <= maxReplicaCount")
    auths = keda("TriggerAuthentication")
    for trigger in spec.get("triggers") or [None]:
        if not trigger or not trigger.get("type") or not trigger.get("metadata"):
            problems.append("a trigger needs type and metadata")
            continue
        bad = [k for k, v in trigger["metadata"].items() if not isinstance(v, str)]
        problems.extend(f"metadata.{k} must be a string" for k in bad)
        if trigger.get("authenticationRef", {}).get("name") not in auths:
            problems.append("authenticationRef names no TriggerAuthentication")
    return problems


def test_keda_scaled_objects_are_well_formed() -> None:
    scaled = keda("ScaledObject")
    assert set(scaled) == {"ckb-bridge", "ckb-worker", "ckb-worker-rabbitmq"}
    for obj in scaled.values():
        assert keda_problems(obj) == []


def test_keda_checks_catch_mistakes() -> None:
    broken = json.loads(json.dumps(keda("ScaledObject")["ckb-worker"]))
    broken["spec"]["scaleTargetRef"]["name"] = "ckb-workers"
    broken["spec"]["triggers"][0]["metadata"]["listLength"] = 200
    broken["spec"]["triggers"][1]["authenticationRef"]["name"] = "nope"
    assert len(keda_problems(broken)) == 3


def test_keda_trigger_authentications_use_the_secret() -> None:
    values = secret_example()
    for auth in keda("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
            assert ref["name"] == "ckb-secrets" and ref["key"] in values


def test_bridge_scaler_follows_the_kafka_config(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    spec = keda("ScaledObject")["ckb-bridge"]["spec"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert meta["consumerGroup"] == settings.kafka.group_id
    assert meta["topic"] in {r.topic for r in settings.routes if not r.is_pattern}
    # more bridges than partitions idle: KEDA must not scale past the partition count
    assert meta["allowIdleConsumers"] == "false"
    assert "maxReplicaCount" in spec and spec["minReplicaCount"] >= 1
    text = (DEPLOY / "keda" / "bridge-scaledobject.yaml").read_text("utf-8")
    assert "More bridge replicas than partitions is useless" in text


def test_worker_scaler_watches_the_workers_queues() -> None:
    spec = keda("ScaledObject")["ckb-worker"]["spec"]
    assert {t["type"] for t in spec["triggers"]} == {"redis"}
    lists = {t["metadata"]["listName"] for t in spec["triggers"]}
    assert lists == queue_option(container("ckb-worker")["args"])
    broker = secret_example()["redis-broker-url"]
    match = re.fullmatch(r"rediss?://[^@]*@([^/]+)/(\d+)", broker)
    assert match
    host, database = match.groups()
    for trigger in spec["triggers"]:
        assert trigger["metadata"]["address"] == host
        assert trigger["metadata"]["databaseIndex"] == database


def test_the_rabbitmq_worker_scaler_watches_the_same_queues_and_is_applied_instead() -> None:
    """``kubectl apply -f deploy/keda/`` applies one worker scaler (Redis lists); the RabbitMQ
    one lives in a directory of its own: KEDA refuses two ScaledObjects on one Deployment."""
    scaled = keda("ScaledObject")
    redis_spec, rabbit_spec = scaled["ckb-worker"]["spec"], scaled["ckb-worker-rabbitmq"]["spec"]
    assert rabbit_spec["scaleTargetRef"] == redis_spec["scaleTargetRef"]
    assert {t["type"] for t in rabbit_spec["triggers"]} == {"rabbitmq"}
    queues = {t["metadata"]["queueName"] for t in rabbit_spec["triggers"]}
    assert queues == queue_option(container("ckb-worker")["args"])
    for trigger in rabbit_spec["triggers"]:
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["protocol"] == "amqp"
        assert "host" not in trigger["metadata"]  # the URL holds a password: from the Secret
    host = secret_example()["rabbitmq-host"]
    assert host.startswith("amqp://") and "CHANGE-ME" in host
    paths = {
        path.relative_to(DEPLOY / "keda").parent
        for path, docs in manifests().items()
        for doc in docs
        if doc.get("kind") == "ScaledObject" and doc["metadata"]["name"].startswith("ckb-worker")
    }
    assert paths == {Path("."), Path("rabbitmq")}
