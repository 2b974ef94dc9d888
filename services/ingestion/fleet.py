"""The fleet view's derived columns (seed 000's fleet manager). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def is_online(status: str | None, last_seen: datetime | None, now: datetime, window: timedelta) -> bool:
    """Online while the controller's retained status is not `offline` and it was heard from recently."""
    if status == "offline" or last_seen is None:
        return False
    return now - last_seen <= window


def seconds_online(
    transitions: Sequence[tuple[datetime, str]], status_before: str | None, start: datetime, end: datetime
) -> int:
    """Seconds in [start, end) spent online, from status transitions (time, status) sorted by time.

    `status_before` is the status in force at `start` (the last transition before the window), None when
    unknown (counted as offline). The result is between 0 and the window's length.
    """
    online_since = start if status_before == "online" else None
    total = timedelta()
    for at, status in transitions:
        if at < start:
            online_since = start if status == "online" else None
            continue
        if at >= end:
            break
        if status == "online" and online_since is None:
            online_since = at
        elif status != "online" and online_since is not None:
            total += at - online_since
            online_since = None
    if online_since is not None:
        total += end - online_since
    return int(total.total_seconds())
