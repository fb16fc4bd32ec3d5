"""Which PostgreSQL driver errors are worth another try, and how to word them.

psycopg is imported only when an error is looked at: SQLite needs no psycopg.
"""

from __future__ import annotations

import time

# SQLSTATE classes worth another try: connection, resources, operator
# intervention (a restart), and rolled-back transactions (deadlock, serialization).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_QUERY_CANCELED = "57014"


def transient(driver_error: BaseException | None) -> bool:
    """Whether another try may succeed: a lost connection, a restarting server."""
    sqlstate = getattr(driver_error, "sqlstate", None)
    if sqlstate is None:
        # A client-side failure: the connection, not the statement.
        return isinstance(driver_error, _operational_error())
    return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES and sqlstate != _QUERY_CANCELED


def unreachable(driver_error: BaseException | None) -> bool:
    """Whether the error says the server could not be reached at all."""
    return getattr(driver_error, "sqlstate", None) is None and isinstance(
        driver_error, _operational_error()
    )


def reason(error: BaseException | None) -> str:
    """The error's first line: no SQL, no parameters, no DETAIL with row values."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _operational_error() -> type[BaseException]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is how we reach PostgreSQL
        return OSError
    return psycopg.OperationalError


class Retry:
    """When to try a failed step again: backing off from 50 ms to 1 s, for up to
    ``seconds`` from the first failure. ``retrying`` is True after one."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline: float | None = None
        self._delay = 0.05
        self.retrying = False

    def allowed(self) -> bool:
        """Whether another try may start (the first call starts the clock)."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._seconds
        return now < self._deadline

    def next_delay(self) -> float:
        """The wait before the next try."""
        delay, self._delay = self._delay, min(self._delay * 2, 1.0)
        self.retrying = True
        return delay
