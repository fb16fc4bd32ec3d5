"""SQLite's driver: one ``sqlite3`` connection, one operation at a time.

Every operation runs in one transaction: ``BEGIN IMMEDIATE`` takes the write
lock at the start, so two processes never both read and then fail to upgrade;
reads take ``BEGIN DEFERRED``, which WAL lets run beside a writer. The journal
is WAL and a connection waits up to ``SQLITE_BUSY_SECONDS`` for another
process's lock, so several processes can share one file; in this process,
operations queue for the connection instead of spinning in SQLite's busy
handler (one writer at a time anyway).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..models import CooldownPolicy, haversine_km
from .sql_executor import drive_steps
from .sql_query import Steps

T = TypeVar("T")

#: How long a SQLite connection waits for another process's write lock.
SQLITE_BUSY_SECONDS = 30.0


class SqliteDriver:
    """The connection (opened on first use) and how steps run on it.

    ``database`` and ``options`` go to ``sqlite3.connect``; ``hooks`` are called
    with the connection once it is open.
    """

    error = sqlite3.Error

    def __init__(
        self,
        database: str,
        options: dict[str, Any],
        hooks: list[Callable[[Any], None]],
    ) -> None:
        self._database = database
        self._options = {
            "timeout": SQLITE_BUSY_SECONDS,
            **options,
            "isolation_level": None,  # the driver says BEGIN and COMMIT itself
            "check_same_thread": False,  # one thread at a time: the lock
        }
        self._hooks = hooks
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def take(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn
        except BaseException:
            self._lock.release()
            raise

    def give_back(self, conn: Any) -> None:
        try:
            if conn.in_transaction:  # never hand on a transaction left open
                self._drop(conn)
        finally:
            self._lock.release()

    def drive(
        self,
        conn: Any,
        steps: Steps[T],
        *,
        atomic: bool,
        read_only: bool,
    ) -> T:
        conn.execute("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")
        try:
            result = drive_steps(conn, steps, sqlite3.Error)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                self._drop(conn)
            raise
        return result

    def transient(self, exc: Exception) -> bool:
        text = str(exc).lower()
        return "locked" in text or "busy" in text

    def _drop(self, conn: Any) -> None:
        """Roll back; a connection that cannot is closed (the next one is new),
        so its write lock never stays held."""
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._conn = None
            conn.close()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(self._database, **self._options)
        try:
            _switch_to_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function(
                "pharox_haversine_km", 4, _haversine_or_null, deterministic=True
            )
            conn.create_function(
                "pharox_cooldown_seconds", 5, _cooldown_seconds, deterministic=True
            )
            for hook in self._hooks:
                hook(conn)
        except BaseException:
            conn.close()
            raise
        return conn


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    # WAL is kept in the file, so only the first connections ever switch; when
    # several processes open a new file at once, the switch can answer "database
    # is locked" without waiting for the busy timeout: wait for it here.
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _haversine_or_null(
    lat1: float | None, lon1: float | None, lat2: float | None, lon2: float | None
) -> float | None:
    if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
        return None
    return haversine_km(lat1, lon1, lat2, lon2)


def _cooldown_seconds(
    strikes: int, base_seconds: float, max_seconds: float, jitter: float, draw: float
) -> float:
    policy = CooldownPolicy.model_construct(
        base_seconds=base_seconds, max_seconds=max_seconds, jitter=jitter
    )
    return policy.seconds(strikes, draw)
