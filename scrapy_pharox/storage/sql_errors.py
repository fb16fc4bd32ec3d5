"""Which PostgreSQL driver errors are worth another try, and how to word them.

psycopg is imported only when an error is looked at: SQLite needs no psycopg.
"""

from __future__ import annotations

import re
import time
from typing import Literal

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
    return (
        getattr(driver_error, "sqlstate", None) is None
        and isinstance(driver_error, _operational_error())
        and refusal(driver_error) is None
    )


Refusal = Literal["authentication", "database"]

#: The SQLSTATEs of a server that turned the connection away.
_REFUSED_SQLSTATES: dict[str, Refusal] = {
    "28000": "authentication",  # invalid authorization: no such role, pg_hba
    "28P01": "authentication",  # invalid password
    "3D000": "database",  # the database does not exist
}
#: The same as libpq and the server word them: psycopg (3.3) gives a failed
#: connect no SQLSTATE, only this text (in English unless the server's
#: lc_messages says otherwise; then the failure is told as unreachable).
_REFUSED_WORDS: tuple[tuple[Refusal, re.Pattern[str]], ...] = (
    (
        "authentication",
        re.compile(
            r'authentication failed for user|role ".*" does not exist|'
            r"pg_hba\.conf|not permitted to log in|no password supplied"
        ),
    ),
    ("database", re.compile(r'database ".*" does not exist')),
)


def refusal(driver_error: BaseException | None) -> Refusal | None:
    """Why a server that was reached turned the connection away: "authentication"
    (a wrong password, no such user) or "database" (no such database); else None."""
    sqlstate = getattr(driver_error, "sqlstate", None)
    if sqlstate is not None:
        return _REFUSED_SQLSTATES.get(sqlstate)
    if not isinstance(driver_error, _operational_error()):
        return None
    message = str(driver_error)
    return next((kind for kind, words in _REFUSED_WORDS if words.search(message)), None)


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
