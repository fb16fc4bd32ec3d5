"""Rounds: the PostgreSQL statements of many coroutines, one query each.

See ``Pipeliner``. The connection is one psycopg ``AsyncConnection`` on the
running loop; a round is one simple-protocol query (``sql_batch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from ..models import Lease
from . import sql_release as releasing
from .sql_batch import Batcher
from .sql_psycopg import connection_lost, usable
from .sql_query import Query, Steps
from .sql_rows import release_parameters
from .sql_steps import release_steps

T = TypeVar("T")


class _Pending:
    """A coroutine's steps waiting in the pipeliner, and its result."""

    __slots__ = ("future", "query", "steps")

    def __init__(self, steps: Steps[Any], query: Query, future: asyncio.Future[Any]):
        self.steps = steps
        self.query = query
        self.future = future


class Pipeliner:
    """One connection on the running loop, shared by every coroutine's steps.

    While a round trip is out, the queries that coroutines queue wait; then
    they all go in the next round: one simple-protocol query of their
    statements (``sql_batch.Batcher``), one round trip, one transaction
    (PostgreSQL runs a query's statements in one implicit transaction). A
    crawl has several acquires and releases in flight at any moment, so a
    round carries several of them.

    One transaction for a round cannot deadlock with another process's round:
    releases come first, in proxy id order (they wait for proxy rows), then
    acquires, which skip locked proxies and wait only for their pool's row.
    Queries that may wait otherwise (reclaiming expired leases, looking a
    lease up) run on their own. A round that fails for a statement's error
    rolls back as a whole: each of its queries then runs on its own, so the
    error reaches the coroutine whose query caused it, and only that one; a
    query psycopg refuses to quote (a NUL byte in a text value) fails alone,
    nothing of it sent, and the connection stays as good as new.
    """

    def __init__(
        self, options: dict[str, Any], hooks: list[Callable[[Any], None]]
    ) -> None:
        self._options = options
        self._hooks = hooks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._batcher: Batcher | None = None
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
        conn, self._conn, self._batcher = self._conn, None, None
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
            rounds = await self._connection()
        except psycopg.Error as exc:
            _fail(batch, exc)
            return
        together = sorted(
            (p for p in batch if p.query.order is not None),
            key=lambda p: p.query.order,  # type: ignore[arg-type,return-value]
        )
        alone = [p for p in batch if p.query.order is None]
        if together:
            error = await self._send(rounds, together)
            if error is not None:
                if self._lost(error, batch):
                    return
                # A statement failed on the server: the round's transaction
                # rolled back as a whole. Each runs again on its own, so the
                # error reaches the coroutine whose statement caused it only.
                if len(together) == 1:
                    self._advance(together[0], None, error)
                else:
                    alone += together
        for index, pending in enumerate(alone):
            error = await self._send(rounds, [pending])
            if error is not None:
                if self._lost(error, alone[index:]):
                    return
                self._advance(pending, None, error)

    async def _send(
        self, rounds: Batcher, pendings: list[_Pending]
    ) -> psycopg.Error | None:
        """The pendings' queries in one round trip, each pending advanced with
        its result; or the server's error, nothing advanced (rolled back)."""
        try:
            outcomes = await rounds.run([pending.query for pending in pendings])
        except psycopg.Error as exc:
            return exc
        for pending, outcome in zip(pendings, outcomes, strict=True):
            if isinstance(outcome, psycopg.Error):
                self._advance(pending, None, outcome)
            else:
                self._advance(pending, outcome, None)
        return None

    def _lost(self, error: psycopg.Error, pendings: list[_Pending]) -> bool:
        """Whether the connection died: then the pendings fail with ``error``."""
        if self._conn is None or not connection_lost(self._conn):
            return False
        self.close()
        _fail(pendings, error)
        return True

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
            releasing.pg_release(), release_parameters(lease, None), lease.proxy_id
        )
        loop = self._loop or asyncio.get_running_loop()
        self._queue.append(_Pending(steps, next(steps), loop.create_future()))

    async def _connection(self) -> Batcher:
        if self._conn is not None and self._batcher is not None and usable(self._conn):
            return self._batcher
        self.close()
        conn = await psycopg.AsyncConnection.connect(**self._options)
        for hook in self._hooks:
            hook(conn)
        self._conn, self._batcher = conn, Batcher(conn)
        return self._batcher


def _fail(batch: list[_Pending], exc: psycopg.Error) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


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
