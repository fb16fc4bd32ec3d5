"""PostgreSQL's driver: blocking psycopg connections for the executor.

Acquire and release run for every request of a crawl. Going through
SQLAlchemy's engine (pool checkout, execution context, result wrapping) cost
about three times the client CPU of the statement itself, and a crawl process
is bound by that CPU; so the storage keeps its own psycopg connections
(autocommit: every hot operation is one statement; psycopg prepares a statement
on the server once it ran a few times there) and runs the statements
SQLAlchemy compiled once (``sql_query.Prepared``). A connection the server
closed is noticed before use without a round trip (``usable``), and one that
failed mid-statement is never used again.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from .sql_errors import transient
from .sql_executor import drive_steps
from .sql_query import Steps

T = TypeVar("T")


#: Idle blocking connections the driver keeps; more are closed when given back.
MAX_IDLE_CONNECTIONS = 16


class PsycopgDriver:
    """Blocking connections, one per thread that runs an operation at a time.

    ``options`` go to ``psycopg.connect``; ``hooks`` are called with every
    connection opened (a benchmark traces the wire there).
    """

    error = psycopg.Error

    def __init__(self, options: dict[str, Any], hooks: list[Callable[[Any], None]]):
        self._options = {**options, "autocommit": True}
        self._hooks = hooks
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False

    def take(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if usable(conn):
                    return conn
                conn.close()
        conn = psycopg.connect(**self._options)
        for hook in self._hooks:
            hook(conn)
        return conn

    def give_back(self, conn: Any) -> None:
        if not reusable(conn):
            lost = connection_lost(conn)
            conn.close()
            if lost:  # the server probably restarted: the others are gone too
                self.close(reopen=True)
            return
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def drive(
        self,
        conn: Any,
        steps: Steps[T],
        *,
        atomic: bool,
        read_only: bool,
    ) -> T:
        if not atomic:  # one statement, atomic on its own
            return drive_steps(conn, steps, psycopg.Error)
        with conn.transaction():
            return drive_steps(conn, steps, psycopg.Error)

    def transient(self, exc: Exception) -> bool:
        return transient(exc)

    def close(self, *, reopen: bool = False) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = self._closed or not reopen  # closed stays closed
        for conn in idle:
            conn.close()


_IDLE_TRANSACTION = psycopg.pq.TransactionStatus.IDLE
_BAD = psycopg.pq.ConnStatus.BAD


def connection_lost(conn: Any) -> bool:
    return bool(conn.broken or conn.info.status == _BAD)


def reusable(conn: Any) -> bool:
    """A statement's error leaves an autocommit connection as good as new; a lost
    connection or a wait cancelled mid-statement does not."""
    return (
        not connection_lost(conn) and conn.info.transaction_status == _IDLE_TRANSACTION
    )


def usable(conn: Any) -> bool:
    """False for a connection closed, or whose socket has something to read while
    idle: the server closed it (a restart, a cut wire). Costs no round trip."""
    if conn.closed:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable
