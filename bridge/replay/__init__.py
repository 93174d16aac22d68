"""``ckb dlq replay``: send dead letters back to the topic they came from.

A replay reads a dead-letter topic under its own consumer group (``ckb-replay.<dlq topic>``
unless ``--group`` names another), from that group's committed position up to the end
offsets captured when it starts, so it terminates: letters written while it runs are left
for the next replay. Each selected letter is produced to ``ckb.original.topic`` (or
``--to``) with its key, value and headers byte for byte, minus every ``ckb.*`` header,
plus ``ckb.replay.count`` (one more than the letter carried), by an idempotent producer with
``acks=all``. Only letters of the configured group, for topics the routes consume, replayed
fewer than ``--max-replays`` times are sent (:mod:`~bridge.replay.trust`); the others are
refused, counted and, like filtered ones, committed past: they stay in the topic. To the
original topic a letter goes to the original partition when that partition still exists
(keys stay where they were, whatever partitioner wrote them); to another topic the
producer's partitioner decides.

Progress is committed under the replay group only up to the lowest letter whose delivery
report has not come back without error (letters filtered out, skipped or refused count as
done), so an interrupted replay resumes without loss and without replaying a delivered
letter twice.
Payloads are never printed: not in the listing, not in the summary, not in errors.

The decisions (which letter, where to, what to strip, how to count) are pure functions;
:class:`Replayer` only moves records and offsets. One idea per module:

- :mod:`~bridge.replay.letters`: a dead letter's ``ckb.*`` headers, parsed and stripped
- :mod:`~bridge.replay.trust`: which letters may be replayed at all (group, routed topic,
  ``--max-replays``)
- :mod:`~bridge.replay.selection`: which letters (``--reason``, ``--since``), where to
- :mod:`~bridge.replay.stats`: counts per reason and outcome, the summary line
- :mod:`~bridge.replay.options`: options in, result out, :class:`ReplayError`
- :mod:`~bridge.replay.clients`: consumer, producer and admin settings
- :mod:`~bridge.replay.commits`: committing the replay group's offsets
- :mod:`~bridge.replay.plan`: where to start and end on each partition
- :mod:`~bridge.replay.engine`: :class:`Replayer`, consume, produce, confirm, commit
- :mod:`~bridge.replay.session`: one run's clients, plan and signal handling
- :mod:`~bridge.replay.progress`: a run with a progress bar
- :mod:`~bridge.replay.render`: the dry-run listing and the summary

This package re-exports the public names, so ``from bridge.replay import …`` stays as it was.
"""

from bridge.dead_letter_headers import REPLAY_COUNT
from bridge.replay.clients import (
    replay_admin_config,
    replay_consumer_config,
    replay_producer_config,
)
from bridge.replay.commits import COORDINATOR_BUSY, TP, CommitOffsets, GroupOffsets, retriable
from bridge.replay.engine import Replayer
from bridge.replay.letters import (
    DeadLetter,
    Headers,
    header_text,
    replayed_headers,
    strip_ckb_headers,
)
from bridge.replay.options import (
    GROUP_PREFIX,
    ProgressCallback,
    ReplayError,
    ReplayOptions,
    ReplayResult,
    default_group,
)
from bridge.replay.plan import (
    PartitionPlan,
    committed_offsets,
    partition_count,
    plan_partition,
    plan_topic,
)
from bridge.replay.progress import run_with_progress
from bridge.replay.render import (
    LISTING_COLUMNS,
    listing_row,
    refusal_notes,
    render_refused,
    render_selected,
    render_summary,
)
from bridge.replay.selection import (
    Selection,
    Verdict,
    parse_since,
    since_option,
    target_partition,
)
from bridge.replay.session import replay, replay_session, stop_on_signals
from bridge.replay.stats import NO_REASON, OUTCOMES, ReplayStats, outcome_of
from bridge.replay.trust import DEFAULT_MAX_REPLAYS, Refusal, Trust, trust_for

__all__ = [
    "COORDINATOR_BUSY",
    "DEFAULT_MAX_REPLAYS",
    "GROUP_PREFIX",
    "LISTING_COLUMNS",
    "NO_REASON",
    "OUTCOMES",
    "REPLAY_COUNT",
    "TP",
    "CommitOffsets",
    "DeadLetter",
    "GroupOffsets",
    "Headers",
    "PartitionPlan",
    "ProgressCallback",
    "Refusal",
    "ReplayError",
    "ReplayOptions",
    "ReplayResult",
    "ReplayStats",
    "Replayer",
    "Selection",
    "Trust",
    "Verdict",
    "committed_offsets",
    "default_group",
    "header_text",
    "listing_row",
    "outcome_of",
    "parse_since",
    "partition_count",
    "plan_partition",
    "plan_topic",
    "refusal_notes",
    "render_refused",
    "render_selected",
    "render_summary",
    "replay",
    "replay_admin_config",
    "replay_consumer_config",
    "replay_producer_config",
    "replay_session",
    "replayed_headers",
    "retriable",
    "run_with_progress",
    "since_option",
    "stop_on_signals",
    "strip_ckb_headers",
    "target_partition",
    "trust_for",
]
