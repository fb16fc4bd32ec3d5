"""Which PostgreSQL driver errors are worth another try, and how to word them.

psycopg is imported only when an error is looked at: SQLite needs no psycopg.
"""

from __future__ import annotations

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
