"""Topic → route: exact names first, then ^regex routes in file order."""

from __future__ import annotations

from bridge.routing import Router
from bridge.settings import Route


def make(topic: str, task: str) -> Route:
    return Route(topic=topic, task=task)


def test_exact_beats_regex_even_when_regex_comes_first() -> None:
    router = Router([make("^orders.*", "tasks.pattern"), make("orders", "tasks.exact")])
    route = router.match("orders")
    assert route is not None
    assert route.task == "tasks.exact"
    other = router.match("orders-eu")
    assert other is not None
    assert other.task == "tasks.pattern"


def task_of(router: Router, topic: str) -> str | None:
    route = router.match(topic)
    return None if route is None else route.task


def test_regex_routes_in_file_order() -> None:
    first = Router([make("^orders\\..*", "tasks.first"), make("^orders.*", "tasks.second")])
    second = Router([make("^orders.*", "tasks.second"), make("^orders\\..*", "tasks.first")])
    assert task_of(first, "orders.eu") == "tasks.first"
    assert task_of(second, "orders.eu") == "tasks.second"
    # only the broader pattern matches this one, whatever the order
    assert task_of(first, "orders-eu") == "tasks.second"
    assert task_of(second, "orders-eu") == "tasks.second"


def test_regex_is_anchored_at_the_start() -> None:
    router = Router([make("^orders", "tasks.x")])
    assert router.match("orders-eu") is not None
    assert router.match("eu-orders") is None


def test_no_match_is_none_and_stays_none() -> None:
    router = Router([make("orders", "tasks.x"), make("^pay.*", "tasks.y")])
    assert router.match("shipments") is None
    assert router.match("shipments") is None  # cached answer is the same
    assert router.match("ORDERS") is None  # case-sensitive, like Kafka
    assert router.match("payments") is not None


def test_repeated_match_returns_same_route() -> None:
    orders = make("orders", "tasks.x")
    router = Router([orders])
    assert router.match("orders") is orders
    assert router.match("orders") is orders


def test_subscription_lists_exact_names_and_patterns() -> None:
    router = Router(
        [
            make("orders", "tasks.a"),
            make("^audit\\..*", "tasks.b"),
            make("payments", "tasks.c"),
            make("^ev-.*", "tasks.d"),
        ]
    )
    subscription = router.subscription()
    assert subscription == ["orders", "payments", "^audit\\..*", "^ev-.*"]
    assert all(name.startswith("^") for name in subscription[2:])


def test_empty_router() -> None:
    router = Router([])
    assert router.subscription() == []
    assert router.match("orders") is None
