"""Celery-style rates and the route settings around them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.rate_limit import parse_rate
from bridge.settings import Route


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("100/s", 100.0), ("30/m", 0.5), ("7200/h", 2.0), ("10", 10.0), (" 2.5 / s ", 2.5)],
)
def test_celery_style_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["", "fast", "0/s", "10/d", "-1/s", "1e3/s"])
def test_a_bad_rate_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="N/s, N/m or N/h"):
        parse_rate(text)


def test_the_burst_defaults_to_one_second_s_worth_and_at_least_one_token() -> None:
    assert Route(topic="t", task="x", rate_limit="50/s").burst == 50
    assert Route(topic="t", task="x", rate_limit="30/m").burst == 1
    assert Route(topic="t", task="x", rate_limit="30/m", rate_burst=5).burst == 5


def test_a_burst_without_a_rate_is_refused() -> None:
    with pytest.raises(ValidationError, match="rate_burst without rate_limit"):
        Route(topic="t", task="x", rate_burst=5)
