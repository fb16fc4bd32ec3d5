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
from collections import namedtuple
from collections.abc import Callable, Generator, Mapping
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from ..exceptions import StorageError
from ..models import Lease
from . import sql_leasing as leasing
from .sql_clauses import Prepared
from .sql_errors import Retry, reason, transient
from .sql_rows import lease_from_row

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A generator of queries that receives each query's first row (or None), and
#: returns the operation's result. A driver error of a query is thrown into it.
Steps = Generator["Query", Any, T]

#: Idle blocking connections the lane keeps; more are closed when given back.
MAX_IDLE_CONNECTIONS = 16
#: Tries of one acquire while its statement found only rows others hold locked.
ACQUIRE_ROUNDS = 32


class Query:
    """One prepared statement with its parameters.

    ``order`` is where it goes in a pipelined round (see ``_Pipeliner``); None
    keeps it out of rounds: it runs on its own.
    """

    __slots__ = ("order", "params", "sql")

    def __init__(
        self,
        statement: Prepared,
        values: Mapping[str, Any],
        order: tuple[int, str] | None = None,
    ) -> None:
        self.sql = statement.sql
        self.params = statement.parameters(values)
        self.order = order


#: Round order: releases first, by proxy id, then acquires (see ``_Pipeliner``).
_RELEASE, _ACQUIRE = 0, 1


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
        self._pipeliner = _Pipeliner(options, self.connection_hooks)
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
        and steps of several coroutines share round trips (``_Pipeliner``)."""
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
                if _usable(conn):
                    return conn
                conn.close()
        conn = psycopg.connect(**self._options)
        for hook in self._hooks:
            hook(conn)
        return conn

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        if not _reusable(conn):
            lost = _lost(conn)
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


class _Pending:
    """A coroutine's steps waiting in the pipeliner, and its result."""

    __slots__ = ("future", "query", "steps")

    def __init__(self, steps: Steps[Any], query: Query, future: asyncio.Future[Any]):
        self.steps = steps
        self.query = query
        self.future = future


class _Pipeliner:
    """One connection on the running loop, shared by every coroutine's steps.

    While a round trip is out, the queries that coroutines queue wait; then
    they all go in the next round: one psycopg pipeline
    (``AsyncConnection.pipeline()``), one round trip, one transaction
    (PostgreSQL commits at the pipeline's sync). A crawl has several acquires
    and releases in flight at any moment, so a round carries several of them.

    One transaction for a round cannot deadlock with another process's round:
    releases come first, in proxy id order (they wait for proxy rows), then
    acquires, which skip locked proxies and wait only for their pool's row.
    Queries that may wait otherwise (reclaiming expired leases, looking a
    lease up) run on their own. A round that fails for a statement's error
    rolls back as a whole: each of its queries then runs on its own, so the
    error reaches the coroutine whose query caused it, and only that one; a
    query psycopg refuses to send (a NUL byte in a text value) fails alone,
    and the connection stays as good as new.
    """

    def __init__(
        self, options: dict[str, Any], hooks: list[Callable[[Any], None]]
    ) -> None:
        self._options = options
        self._hooks = hooks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None

    async def run(self, steps: Steps[T]) -> T:
        """Drive ``steps`` to its result, its queries in the coming rounds."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A connection serves the loop it was opened on only.
            self.close()
            self._loop, self._queue, self._worker = loop, [], None
        try:
            query = next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        pending = _Pending(steps, query, loop.create_future())
        self._queue.append(pending)
        if self._worker is None:
            self._worker = loop.create_task(self._work())
        return await pending.future  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the connection now, from any thread, loop running or not."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_now(conn)

    async def _work(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                # One turn of the loop first: coroutines woken by the last round
                # (or by their own I/O) queue their statements in it and ride
                # this round, not the next. A bench crawl needed 687 rounds for
                # 4,002 statements without it, 432 with it.
                await asyncio.sleep(0)
                batch, self._queue = self._queue, []
                await self._round([p for p in batch if not p.future.done()])
        except BaseException as exc:
            # The loop shutting down (or a bug): no coroutine may wait forever,
            # and the connection may be mid-statement.
            self.close()
            for pending in [*batch, *self._queue]:
                if pending.future.done():
                    continue
                if isinstance(exc, Exception):
                    pending.future.set_exception(exc)
                else:
                    pending.future.cancel()
            self._queue = []
            raise
        finally:
            self._worker = None

    async def _round(self, batch: list[_Pending]) -> None:
        try:
            conn = await self._connection()
        except psycopg.Error as exc:
            _fail(batch, exc)
            return
        together = sorted(
            (p for p in batch if p.query.order is not None),
            key=lambda p: p.query.order,  # type: ignore[arg-type,return-value]
        )
        alone = [p for p in batch if p.query.order is None]
        if len(together) == 1:
            alone.insert(0, together.pop())  # a pipeline of one saves nothing
        if together:
            try:
                sent = await self._pipelined(conn, together)
            except psycopg.Error as exc:
                if _lost(conn):
                    self.close()
                    _fail(batch, exc)
                    return
                # A statement failed on the server: the round's transaction
                # rolled back as a whole. Each runs again on its own, so the
                # error reaches the coroutine whose statement caused it only.
                alone += together
            else:
                for pending, outcome in sent:
                    if isinstance(outcome, psycopg.Error):
                        self._advance(pending, None, outcome)
                    else:
                        self._advance(pending, outcome, None)
        for index, pending in enumerate(alone):
            try:
                cursor = await conn.execute(pending.query.sql, pending.query.params)
                row = _named(pending.query, cursor, await cursor.fetchone())
            except psycopg.Error as exc:
                if _lost(conn):
                    self.close()
                    _fail(alone[index:], exc)
                    return
                self._advance(pending, None, exc)
            else:
                self._advance(pending, row, None)

    async def _pipelined(
        self, conn: psycopg.AsyncConnection[Any], together: list[_Pending]
    ) -> list[tuple[_Pending, Any]]:
        """Send the statements in one psycopg pipeline: one write, one read, one
        transaction (it commits at the pipeline's sync). Each pending comes back
        with its row, or with the error of a statement psycopg refused to send
        (a parameter it cannot encode, such as a NUL byte: nothing went out, so
        it is that statement's own). A server's error raises."""
        cursors: list[tuple[_Pending, Any]] = []
        async with conn.pipeline():
            for pending in together:
                cursor = conn.cursor()
                try:
                    await cursor.execute(pending.query.sql, pending.query.params)
                except psycopg.Error as exc:
                    if _from_server(exc) or _lost(conn):
                        raise
                    cursors.append((pending, exc))
                else:
                    cursors.append((pending, cursor))
        sent: list[tuple[_Pending, Any]] = []
        for pending, cursor in cursors:
            if isinstance(cursor, psycopg.Error):
                sent.append((pending, cursor))
            else:
                sent.append(
                    (pending, _named(pending.query, cursor, await cursor.fetchone()))
                )
        return sent

    def _advance(
        self, pending: _Pending, row: Any, error: psycopg.Error | None
    ) -> None:
        """Hand the steps their row (or error): done, failed, or queued again."""
        try:
            if error is not None:
                pending.query = pending.steps.throw(error)
            else:
                pending.query = pending.steps.send(row)
        except StopIteration as done:
            if not pending.future.done():
                pending.future.set_result(done.value)
            elif isinstance(done.value, Lease):
                self._give_back(done.value)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
        else:
            self._queue.append(pending)

    def _give_back(self, lease: Lease) -> None:
        """Release a lease whose coroutine stopped waiting for it (cancelled
        while its acquire was out): nobody else would, before it expires."""
        steps = release_steps(
            leasing.pg_release(), {"lease_id": lease.id}, lease.proxy_id
        )
        loop = self._loop or asyncio.get_running_loop()
        self._queue.append(_Pending(steps, next(steps), loop.create_future()))

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and _usable(self._conn):
            return self._conn
        self.close()
        conn = await psycopg.AsyncConnection.connect(**self._options)
        for hook in self._hooks:
            hook(conn)
        self._conn = conn
        return conn


def _fail(batch: list[_Pending], exc: psycopg.Error) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


def _lost(conn: Any) -> bool:
    return bool(conn.broken or conn.info.status == _BAD)


def _from_server(exc: psycopg.Error) -> bool:
    """Whether the server answered with this error (it has a SQLSTATE), rather
    than psycopg refusing the statement before sending it."""
    return exc.sqlstate is not None or isinstance(exc, psycopg.errors.PipelineAborted)


def _close_now(conn: psycopg.AsyncConnection[Any]) -> None:
    """``await conn.close()`` without a loop: psycopg's close() never suspends
    (it frees the libpq connection), so one step of the coroutine runs it all."""
    closing = conn.close()
    try:
        closing.send(None)
    except StopIteration:
        return
    closing.close()  # pragma: no cover - a psycopg whose close() suspends
    raise RuntimeError("psycopg's AsyncConnection.close() suspended")


def _reusable(conn: Any) -> bool:
    """A statement's error leaves an autocommit connection as good as new; a lost
    connection or a wait cancelled mid-statement does not."""
    return not _lost(conn) and conn.info.transaction_status == _IDLE_TRANSACTION


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
            row = yield Query(statement, params, (_ACQUIRE, ""))
        except psycopg.IntegrityError:
            # The lease id exists: a lost first try committed it after all.
            if retrying and (lease := (yield from _taken_before(params))) is not None:
                return lease
            raise
        if row.id is not None:
            return lease_from_row(row, params, params["pool_name"])
        if row.reclaim_needed:
            yield Query(leasing.pg_reclaim(), {})
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
    return Prepared(leasing.lease_with_proxy())


def release_steps(
    statement: Prepared, params: dict[str, Any], proxy_id: UUID
) -> Steps[bool]:
    """One release: whether the statement released the lease (it was active)."""
    row = yield Query(statement, params, (_RELEASE, str(proxy_id)))
    return bool(row.released)


_IDLE_TRANSACTION = psycopg.pq.TransactionStatus.IDLE
_BAD = psycopg.pq.ConnStatus.BAD


def _drive(conn: psycopg.Connection[Any], steps: Steps[T]) -> T:
    query = next(steps)
    while True:
        try:
            try:
                cursor = conn.execute(query.sql, query.params)
                row = _named(query, cursor, cursor.fetchone())
            except psycopg.Error as exc:
                query = steps.throw(exc)
            else:
                query = steps.send(row)
        except StopIteration as done:
            result: T = done.value
            return result


#: The row type of each statement run, by its SQL: psycopg's namedtuple_row
#: would work the names out again for every row.
_row_types: dict[str, Callable[[Any], Any]] = {}


def _named(query: Query, cursor: Any, values: tuple[Any, ...] | None) -> Any:
    """A row of ``query`` with its columns as attributes, or None."""
    if values is None:
        return None
    make = _row_types.get(query.sql)
    if make is None:
        names = [column.name for column in cursor.description]
        row_type: Any = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        make = _row_types[query.sql] = row_type._make
    return make(values)


def _usable(conn: Any) -> bool:
    """False for a connection closed, or whose socket has something to read while
    idle: the server closed it (a restart, a cut wire). Costs no round trip."""
    if conn.closed:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable
