"""The schema of one route (``routes[]``) and the base every settings model shares.

Kept apart from :mod:`bridge.settings` (the whole file, its sources and loading); both are
imported from there.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.core.vocabulary import default_dlq_topic
from bridge.rate_limit import parse_rate
from bridge.strict_json import DEPTH_CEILING

CallMode = Literal["arg", "kwargs", "envelope"]
PayloadCodec = Literal["json", "text", "bytes"]
OrderingMode = Literal["unordered", "key", "partition"]

#: what Kafka accepts as a topic name
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class Strict(BaseModel):
    # inf/nan in a timeout or grace would raise deep in the loop (issue 10): refused here
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BatchSettings(Strict):
    """``routes[].batch``: consecutive records of one partition sent as one task."""

    max_records: int = Field(default=100, ge=1, le=100_000)
    #: seconds the oldest record waits for a fuller batch under light traffic
    max_wait: float = Field(default=0.5, ge=0, le=3600)
    #: record bytes a batch holds at most (a record larger than this goes alone)
    max_bytes: int = Field(default=1_048_576, ge=1)


class Route(Strict):
    topic: str
    task: str = Field(min_length=1)
    queue: str | None = None
    call: CallMode = "arg"
    payload: PayloadCodec = "json"
    ordering: OrderingMode = "unordered"
    max_in_flight: int = Field(default=1000, ge=1, le=1_000_000)
    task_timeout: float = Field(default=300.0, gt=0)
    max_redispatch: int = Field(default=2, ge=0, le=100)
    dlq_topic: str | None = None
    #: a bigger value goes to the DLQ (decode_error) instead of into a Celery message
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    #: deeper JSON goes to the DLQ (decode_error); Python's codec is unsafe past ~500
    max_json_depth: int = Field(default=64, ge=1, le=DEPTH_CEILING)
    #: record bytes (value, key, headers) open per partition before it pauses
    max_in_flight_bytes: int = Field(default=64 * 2**20, ge=1)
    #: task starts per second/minute/hour for the whole consumer group ("100/s", "30/m")
    rate_limit: str | None = None
    #: tokens the bucket holds (sent at once after a pause); default one second's worth
    rate_burst: int | None = Field(default=None, ge=1)
    batch: BatchSettings | None = None

    @field_validator("topic")
    @classmethod
    def _valid_topic(cls, value: str) -> str:
        if not value:
            raise ValueError("topic must not be empty")
        if value.startswith("^"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @field_validator("dlq_topic")
    @classmethod
    def _valid_dlq_topic(cls, value: str | None) -> str | None:
        if value is not None and (not _TOPIC_NAME.fullmatch(value) or value in (".", "..")):
            raise ValueError(
                f"{value!r} is not a valid Kafka topic name: use letters, digits, '.', '_' "
                "and '-', at most 249 characters"
            )
        return value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @model_validator(mode="after")
    def _batch_needs_a_list_call(self) -> Route:
        if self.batch is not None and self.call == "kwargs":
            raise ValueError(
                "batch with call: kwargs: a batch task takes one list; use call: arg (a list "
                "of payloads) or call: envelope (a list of envelopes)"
            )
        return self

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> Route:
        if self.rate_burst is not None and self.rate_limit is None:
            raise ValueError('rate_burst without rate_limit: set rate_limit (e.g. "100/s")')
        return self

    @property
    def tokens_per_second(self) -> float | None:
        return None if self.rate_limit is None else parse_rate(self.rate_limit)

    @property
    def burst(self) -> int:
        """The bucket's size: ``rate_burst``, or one second's worth (at least one token)."""
        rate = self.tokens_per_second or 0.0
        return self.rate_burst or max(1, math.ceil(rate))

    @property
    def is_pattern(self) -> bool:
        return self.topic.startswith("^")

    def dlq_for(self, topic: str) -> str:
        return self.dlq_topic or default_dlq_topic(topic)
