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
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping
from functools import cache
from typing import Any, TypeVar

import psycopg
from psycopg.rows import namedtuple_row

from ..exceptions import StorageError
from ..models import Lease
from . import sql_statements as sql
from .sql_errors import reason, transient
from .sql_rows import lease_from_row
from .sql_statements import Prepared

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A generator of queries that receives each query's first row (or None), and
#: returns the operation's result. A driver error of a query is thrown into it.
Steps = Generator["Query", Any, T]

#: Idle blocking connections the lane keeps; more are closed when given back.
MAX_IDLE_CONNECTIONS = 16
#: Connections of the asyncio runner: steps wait for one beyond that.
MAX_ASYNC_CONNECTIONS = 4
#: Tries of one acquire while its statement found only rows others hold locked.
ACQUIRE_ROUNDS = 32


class Query:
    """One prepared statement with its parameters."""

    __slots__ = ("params", "sql")

    def __init__(self, statement: Prepared, values: Mapping[str, Any]) -> None:
        self.sql = statement.sql
        self.params = statement.parameters(values)


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
        options = {**connect_kwargs, "autocommit": True, "row_factory": namedtuple_row}
        self._connections = _Connections(options, self.connection_hooks)
        self._async_connections = _AsyncConnections(options, self.connection_hooks)
        self._shown_url = shown_url
        self._describe = describe
        self._retry_seconds = retry_seconds

    # -- the two operations --------------------------------------------------------

    def acquire(self, statement: Prepared, params: dict[str, Any]) -> Lease | None:
        """Run ``pg_acquire``'s ``statement`` (``acquire_steps``)."""
        return self.run(
            "acquiring a proxy", lambda again: acquire_steps(statement, params, again)
        )

    def release(self, statement: Prepared, params: dict[str, Any]) -> bool:
        """Run a release ``statement``; whether it released the lease."""
        return self.run("releasing a lease", lambda _: release_steps(statement, params))

    async def acquire_async(
        self, statement: Prepared, params: dict[str, Any]
    ) -> Lease | None:
        """``acquire`` on the running loop."""
        return await self.run_async(
            "acquiring a proxy", lambda again: acquire_steps(statement, params, again)
        )

    async def release_async(self, statement: Prepared, params: dict[str, Any]) -> bool:
        """``release`` on the running loop."""
        return await self.run_async(
            "releasing a lease", lambda _: release_steps(statement, params)
        )

    # -- the runners -----------------------------------------------------------------

    def run(self, action: str, steps: Callable[[bool], Steps[T]]) -> T:
        """Drive ``steps(retrying)`` to its result, again after a lost connection."""
        retry = _Retry(self._retry_seconds)
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
        """``run`` on the running loop: the loop serves others while it waits."""
        retry = _Retry(self._retry_seconds)
        while True:
            conn = None
            try:
                conn = await self._async_connections.take()
                return await _drive_async(conn, steps(retry.retrying))
            except psycopg.Error as exc:
                delay = self._next_try(action, exc, retry)
            finally:
                if conn is not None:
                    self._async_connections.give_back(conn)
            await asyncio.sleep(delay)

    def close(self) -> None:
        """Close every idle connection (one in use closes when given back)."""
        self._connections.close()
        self._async_connections.close()

    def _next_try(self, action: str, exc: psycopg.Error, retry: _Retry) -> float:
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
                if _usable(conn):
                    return conn
                conn.close()
        conn = psycopg.connect(**self._options)
        for hook in self._hooks:
            hook(conn)
        return conn

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        if not _reusable(conn):
            lost = conn.pgconn.status == _BAD
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


class _AsyncConnections:
    """Connections of the running loop, at most ``MAX_ASYNC_CONNECTIONS``: a step
    waits for a free one rather than open one more (opening costs the server a
    process, and psycopg a few unprepared runs of each statement)."""

    def __init__(self, options: dict[str, Any], hooks: list[Callable[[Any], None]]):
        self._options = options
        self._hooks = hooks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def take(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A connection serves the loop it was opened on only.
            self.close(reopen=True)
            self._loop = loop
        while True:
            while self._idle:
                conn = self._idle.pop()
                if _usable(conn):
                    return conn
                self._forget(conn)
            if self._open < MAX_ASYNC_CONNECTIONS:
                return await self._connect()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake_one()  # woken, but gone: let the next one go
                raise

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        self._open += 1
        try:
            conn = await psycopg.AsyncConnection.connect(**self._options)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        for hook in self._hooks:
            hook(conn)
        return conn

    def give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not _reusable(conn) or self._closed:
            lost = conn.pgconn.status == _BAD
            self._forget(conn)
            if lost:  # the server probably restarted: the others are gone too
                self.close(reopen=True)
        else:
            self._idle.append(conn)
        self._wake_one()

    def close(self, *, reopen: bool = False) -> None:
        while self._idle:
            self._forget(self._idle.pop())
        self._closed = not reopen

    def _forget(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.pgconn.finish()  # no await: psycopg's close() does only this
        self._open -= 1

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _reusable(conn: Any) -> bool:
    """A statement's error leaves an autocommit connection as good as new; a lost
    connection or a wait cancelled mid-statement does not."""
    lost = conn.pgconn.status == _BAD
    return not lost and conn.info.transaction_status == _IDLE_TRANSACTION


def acquire_steps(
    statement: Prepared, params: dict[str, Any], retrying: bool
) -> Steps[Lease | None]:
    """One acquire: the statement again while it found only rows others hold
    locked, after reclaiming expired leases when it says some block the way.

    A retry first looks for the lease its lost try may have taken: the lease id
    is the caller's, so a reply lost on the wire never leaks a slot.
    """
    if retrying and (lease := (yield from _taken_before(params))) is not None:
        return lease
    for _ in range(ACQUIRE_ROUNDS):
        try:
            row = yield Query(statement, params)
        except psycopg.IntegrityError:
            # The lease id exists: a lost first try committed it after all.
            if retrying and (lease := (yield from _taken_before(params))) is not None:
                return lease
            raise
        if row.id is not None:
            return lease_from_row(row, params, params["pool_name"])
        if row.reclaim_needed:
            yield Query(sql.pg_reclaim(), {})
        elif not row.contended:
            return None
    return None


def _taken_before(params: dict[str, Any]) -> Steps[Lease | None]:
    row = yield Query(_lease_with_proxy(), params)
    if row is None:
        return None
    logger.warning(
        "lease %s was taken by a try whose reply was lost; returning it",
        params["lease_id"],
    )
    return lease_from_row(row, params, params["pool_name"])


@cache
def _lease_with_proxy() -> Prepared:
    return Prepared(sql.lease_with_proxy())


def release_steps(statement: Prepared, params: dict[str, Any]) -> Steps[bool]:
    """One release: whether the statement released the lease (it was active)."""
    row = yield Query(statement, params)
    return bool(row.released)


_IDLE_TRANSACTION = psycopg.pq.TransactionStatus.IDLE
_BAD = psycopg.pq.ConnStatus.BAD


class _Retry:
    """When to try again: backing off from 50 ms to 1 s, until a deadline."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline: float | None = None
        self._delay = 0.05
        self.retrying = False

    def allowed(self) -> bool:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._seconds
        return now < self._deadline

    def next_delay(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, 1.0)
        self.retrying = True
        return delay


def _drive(conn: psycopg.Connection[Any], steps: Steps[T]) -> T:
    query = next(steps)
    while True:
        try:
            try:
                row = conn.execute(query.sql, query.params).fetchone()
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(row)
        except StopIteration as done:
            result: T = done.value
            return result


async def _drive_async(conn: psycopg.AsyncConnection[Any], steps: Steps[T]) -> T:
    query = next(steps)
    while True:
        try:
            try:
                cursor = await conn.execute(query.sql, query.params)
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(row)
        except StopIteration as done:
            result: T = done.value
            return result


def _usable(conn: Any) -> bool:
    """False for a connection closed, or whose socket has something to read while
    idle: the server closed it (a restart, a cut wire). Costs no round trip."""
    if conn.closed:
        return False
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    return not readable
