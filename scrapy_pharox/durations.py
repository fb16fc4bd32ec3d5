"""The one rule for a span of time, wherever the package takes one.

A lease, a cooldown's base and cap, the wait for a proxy, a periodic interval, a
health check's timeout: each is a number of seconds, at most ``MAX_SECONDS``
(seven days: a lease that long is plenty, since a running request's lease is
renewed, and every adapter can store any expiry it gives). Settings and API
calls check theirs with ``check_seconds`` before anything is written.
"""

from __future__ import annotations

import math

from .exceptions import InvalidArgumentError

#: The longest span of time anything takes: seven days.
MAX_SECONDS = 7 * 86400


def check_seconds(
    value: object,
    name: str,
    *,
    zero: bool = False,
    error: type[InvalidArgumentError] = InvalidArgumentError,
) -> float:
    """``value`` as a float when it is a number of seconds above 0 (or from 0,
    with ``zero``) up to ``MAX_SECONDS``; else ``error`` naming ``name`` and the
    value (a PharoxError and a ValueError)."""
    kind = type(value)
    if (kind is float or kind is int) and 0 < value <= MAX_SECONDS:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]  # the common case
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and (value >= 0 if zero else value > 0)
        and value <= MAX_SECONDS
    ):
        return float(value)
    lowest = ">= 0" if zero else "> 0"
    raise error(
        f"{name} must be a number {lowest} (seconds, at most {MAX_SECONDS}: "
        f"7 days), got {value!r}"
    )
