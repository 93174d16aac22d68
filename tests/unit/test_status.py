"""``ckb status``: which partitions it lists is what the bridge consumes."""

from __future__ import annotations

from bridge.routing import Router
from bridge.settings import Settings
from bridge.status import default_bridge_url, routed_topics

EXISTING = ["orders", "orders.dlq", "orders-eu", "orders-eu.dlq", "audit", "legacy.dlq", "x"]


def settings(*topics: str) -> Settings:
    return Settings.model_validate({"routes": [{"topic": t, "task": "tasks.x"} for t in topics]})


def test_a_pattern_route_lists_no_dead_letter_topic() -> None:
    chosen = routed_topics(settings("^orders.*", "audit"), EXISTING)
    assert chosen == ["audit", "orders", "orders-eu"]


def test_an_exact_route_to_a_dlq_topic_is_listed_as_the_bridge_consumes_it() -> None:
    assert routed_topics(settings("legacy.dlq"), EXISTING) == ["legacy.dlq"]


def test_status_and_the_router_agree_on_every_topic() -> None:
    config = settings("^orders.*", "^.*", "legacy.dlq")
    router = Router(config.routes)
    expected = sorted(t for t in EXISTING if router.match(t) is not None)
    assert routed_topics(config, EXISTING) == expected


def test_a_local_bridge_is_asked_for_its_status_with_metrics_disabled_too() -> None:
    routes = [{"topic": "orders", "task": "tasks.x"}]
    for enabled in (True, False):
        config = {"routes": routes, "metrics": {"enabled": enabled, "port": 9200}}
        assert default_bridge_url(Settings.model_validate(config)) == "http://127.0.0.1:9200"
    no_port = {"routes": routes, "metrics": {"port": 0}}  # a free port: unknowable from here
    assert default_bridge_url(Settings.model_validate(no_port)) is None
