"""Closing a Kafka client without letting an unresponsive broker hold the process.

``Consumer.close()`` has no timeout: it leaves the group and waits for the coordinator to
answer (and for commits still in flight). A broker that is frozen, partitioned away or
overloaded can keep it waiting for minutes, so SIGTERM would not stop the bridge. So can a
healthy one: with the classic protocol the coordinator handles one request per connection at a
time, and answers a member's JoinGroup only once every member rejoined, so the commits and the
LeaveGroup of a member closing during a rebalance wait behind its own JoinGroup for as long as
the slowest member takes to return from its revoke callback (librdkafka then gives up the
LeaveGroup after 5 s: "Timed out LeaveGroupRequest in flight ... possibly held back by
preceeding blocking JoinGroupRequest"). Running the close on a helper thread bounds the wait;
when it runs out, the caller exits the process without waiting any longer (the group notices
the missing member after its session timeout, and the records that were not committed are
redelivered to the next owner).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def close_within(close: Callable[[], None], timeout: float, what: str) -> bool:
    """Call ``close`` on a daemon thread; True if it returned within ``timeout`` seconds.

    An exception raised by ``close`` is logged and counts as returned: there is nothing more
    to wait for. When it does not return in time the thread is left behind; the process
    should then exit without running interpreter finalizers that touch the same client.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            close()
        except Exception as exc:  # reported below, on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"ckb-close-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning(
            "closing the %s did not finish within %gs (Kafka does not answer, or a rebalance "
            "under way holds its answers); exiting "
            "without leaving the group cleanly: the group moves its partitions after the "
            "session timeout and uncommitted records are redelivered",
            what,
            timeout,
        )
        return False
    if failure:
        log.warning("closing the %s failed: %s", what, failure[0])
    return True
