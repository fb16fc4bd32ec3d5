"""The lease lane: SqlStorage's acquire and release on PostgreSQL, on raw psycopg.

These two statements run for every request of a crawl. Going through SQLAlchemy
(pool checkout, execution context, result wrapping) cost about three times the
client CPU of the statement itself, and a crawl process is bound by that CPU. So
the lane keeps its own psycopg connections (autocommit; psycopg prepares a
statement on the server once it ran a few times there) and runs the statements
SQLAlchemy compiled once (``Prepared``):
blocking from a worker thread (``run``), or natively on the running asyncio loop
(``run_async``), which spares the thread hop too.

An operation is written once, as a generator of queries (``Steps``) that gets
each query's first row back, and either runner drives it. A run that loses its
connection is tried again on a new one, as SqlStorage's other calls are.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from ..exceptions import StorageError
from ..models import Lease
from .sql_clauses import Prepared
from .sql_errors import Retry, reason, transient
from .sql_rounds import Pipeliner
from .sql_steps import (
    Steps,
    acquire_steps,
    connection_lost,
    named_row,
    release_steps,
    reusable,
    usable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: Idle blocking connections the lane keeps; more are closed when given back.
MAX_IDLE_CONNECTIONS = 16


class LeaseLane:
    """psycopg connections for the hot statements, and the two runners.

    ``connect_kwargs`` go to ``psycopg.connect``. ``connection_hooks`` are called
    with every connection the lane opens (a benchmark traces the wire there).
    """

    def __init__(
        self,
        connect_kwargs: Mapping[str, Any],
        *,
        shown_url: str,
        describe: Callable[[str, psycopg.Error], StorageError],
        retry_seconds: float,
    ) -> None:
        self.connection_hooks: list[Callable[[Any], None]] = []
        options = {**connect_kwargs, "autocommit": True}
        self._connections = _Connections(options, self.connection_hooks)
        self._pipeliner = Pipeliner(options, self.connection_hooks)
        self._shown_url = shown_url
        self._describe = describe
        self._retry_seconds = retry_seconds

    # -- the two operations --------------------------------------------------------

    def acquire(self, statement: Prepared, params: dict[str, Any]) -> Lease | None:
        """Run ``pg_acquire``'s ``statement`` (``acquire_steps``)."""
        return self.run(
            "acquiring a proxy", lambda again: acquire_steps(statement, params, again)
        )

    def release(
        self, statement: Prepared, params: dict[str, Any], proxy_id: UUID
    ) -> bool:
        """Run a release ``statement``; whether it released the lease."""
        return self.run(
            "releasing a lease", lambda _: release_steps(statement, params, proxy_id)
        )

    async def acquire_async(
        self, statement: Prepared, params: dict[str, Any]
    ) -> Lease | None:
        """``acquire`` on the running loop."""
        return await self.run_async(
            "acquiring a proxy", lambda again: acquire_steps(statement, params, again)
        )

    async def release_async(
        self, statement: Prepared, params: dict[str, Any], proxy_id: UUID
    ) -> bool:
        """``release`` on the running loop."""
        return await self.run_async(
            "releasing a lease", lambda _: release_steps(statement, params, proxy_id)
        )

    # -- the runners -----------------------------------------------------------------

    def run(self, action: str, steps: Callable[[bool], Steps[T]]) -> T:
        """Drive ``steps(retrying)`` to its result, again after a lost connection."""
        retry = Retry(self._retry_seconds)
        while True:
            conn = None
            try:
                conn = self._connections.take()
                return _drive(conn, steps(retry.retrying))
            except psycopg.Error as exc:
                delay = self._next_try(action, exc, retry)
            finally:
                if conn is not None:
                    self._connections.give_back(conn)
            time.sleep(delay)

    async def run_async(self, action: str, steps: Callable[[bool], Steps[T]]) -> T:
        """``run`` on the running loop: the loop serves others while it waits,
        and steps of several coroutines share round trips (``sql_rounds``)."""
        retry = Retry(self._retry_seconds)
        while True:
            try:
                return await self._pipeliner.run(steps(retry.retrying))
            except psycopg.Error as exc:
                delay = self._next_try(action, exc, retry)
            await asyncio.sleep(delay)

    def close(self) -> None:
        """Close every idle connection (one in use closes when given back)."""
        self._connections.close()
        self._pipeliner.close()

    def _next_try(self, action: str, exc: psycopg.Error, retry: Retry) -> float:
        """The wait before another try, or the StorageError to raise now."""
        if not (transient(exc) and retry.allowed()):
            raise self._describe(action, exc) from exc
        logger.warning(
            "%s on %s failed (%s); trying again", action, self._shown_url, reason(exc)
        )
        return retry.next_delay()


class _Connections:
    """Blocking connections, one per thread that runs a step at a time; kept."""

    def __init__(self, options: dict[str, Any], hooks: list[Callable[[Any], None]]):
        self._options = options
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

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
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

    def close(self, *, reopen: bool = False) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = not reopen
        for conn in idle:
            conn.close()


def _drive(conn: psycopg.Connection[Any], steps: Steps[T]) -> T:
    query = next(steps)
    while True:
        try:
            try:
                cursor = conn.execute(query.sql, query.params)
                row = named_row(query, cursor, cursor.fetchone())
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(row)
        except StopIteration as done:
            result: T = done.value
            return result
