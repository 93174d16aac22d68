"""What the bridge needs from its dependencies beyond what their versions promise.

pyproject.toml pins ``kombu>=5.7``, but an install can still end up with an older kombu (a
constraints file, ``pip install --no-deps``, a shared environment). The dispatcher publishes
each batch of tasks inside ``Producer.batch()`` (one Redis pipeline) and classifies
``kombu.exceptions.BatchPublishError``, both new in kombu 5.7: without them the bridge would
fail on import, or on its first publish, with a traceback. :func:`kombu_problem` finds that
at start, by looking for the features themselves rather than a version number.

Standard library and kombu only, and nothing here imports the dispatcher: the check must run
before the module that would fail.
"""

from __future__ import annotations

#: the kombu the bridge is built and tested against (keep in step with pyproject.toml)
KOMBU_REQUIREMENT = "kombu>=5.7,<6"


def _missing_kombu_features() -> list[str]:
    import kombu.exceptions
    import kombu.messaging

    missing = []
    if not callable(getattr(kombu.messaging.Producer, "batch", None)):
        missing.append("Producer.batch()")
    if not isinstance(getattr(kombu.exceptions, "BatchPublishError", None), type):
        missing.append("kombu.exceptions.BatchPublishError")
    try:
        from kombu.transport import redis as redis_transport
    except ImportError:
        missing.append("the Redis transport (kombu.transport.redis)")
    else:
        if not callable(getattr(redis_transport.Channel, "create_publish_batch", None)):
            missing.append("pipelined publishing in its Redis transport")
    return missing


def kombu_problem() -> str | None:
    """A message naming what the installed kombu lacks and the fix, or None when it has all."""
    import kombu

    missing = _missing_kombu_features()
    if not missing:
        return None
    version = getattr(kombu, "__version__", "(unknown version)")
    return (
        f"kombu {version} lacks {', '.join(missing)}, which the bridge publishes tasks with "
        f"(one Redis pipeline per batch): install {KOMBU_REQUIREMENT} "
        f"(pip install '{KOMBU_REQUIREMENT}')"
    )
