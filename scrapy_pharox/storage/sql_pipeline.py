"""One round of the lease lane's statements, sent in one libpq pipeline.

psycopg's own pipeline spends ~130 us of Python per statement (a cursor, query
conversion, a result set), several times the statement's share of the round
trip. Here each statement costs a dump of its parameters, one send and one
row load, all in psycopg's C adapters: statements are prepared on the server
once per connection under names of our own, parameters go as text (the SQL
casts them), rows come back binary and are loaded by psycopg's ``Transformer``
for the connection, so they are exactly the rows a cursor would give.

The connection stays psycopg's: after a round it is out of pipeline mode and
idle, and psycopg may run anything else on it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_BINARY = pq.Format.BINARY

# SQLAlchemy's psycopg dialect writes parameters as %(name)s and a percent
# sign as %%.
_PLACEHOLDER = re.compile(rb"%\((\w+)\)s|%%")


class Statement:
    """A statement's SQL with $n placeholders, its parameter names in order,
    and the name it is prepared under on every connection."""

    __slots__ = ("name", "order", "sql")

    _known: ClassVar[dict[str, Statement]] = {}

    def __init__(self, pyformat_sql: str, name: bytes) -> None:
        order: list[str] = []

        def number(match: re.Match[bytes]) -> bytes:
            if match.group(1) is None:
                return b"%"
            key = match.group(1).decode()
            if key not in order:
                order.append(key)
            return b"$%d" % (order.index(key) + 1)

        self.sql = _PLACEHOLDER.sub(number, pyformat_sql.encode())
        self.order = order
        self.name = name

    @classmethod
    def of(cls, pyformat_sql: str) -> Statement:
        """The statement of that SQL, converted once per process."""
        statement = cls._known.get(pyformat_sql)
        if statement is None:
            name = b"pharox_lane_%d" % len(cls._known)
            statement = cls._known[pyformat_sql] = cls(pyformat_sql, name)
        return statement


class RawPipeline:
    """Rounds on one psycopg connection, whose statements it prepares once."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._transformer = Transformer(conn)
        self._prepared: set[bytes] = set()
        self._encoding = conn.info.encoding

    async def run(
        self,
        queries: Sequence[tuple[str, dict[str, Any]]],
        row: Callable[[str, Any, tuple[Any, ...] | None], Any],
    ) -> list[Any]:
        """Each (sql, params) query's first row made by ``row(sql, result,
        values)``, all in one pipeline: one round trip, one transaction. Raises
        the first statement's error once the round is over (all rolled back)."""
        pgconn = self._pgconn
        transformer = self._transformer
        # What each result answers: a prepare (its name), or the query's index.
        expected: list[bytes | int] = []
        preparing: set[bytes] = set()
        pgconn.nonblocking = 1
        pgconn.enter_pipeline_mode()
        try:
            for index, (sql, params) in enumerate(queries):
                statement = Statement.of(sql)
                name = statement.name
                if name not in self._prepared and name not in preparing:
                    pgconn.send_prepare(statement.name, statement.sql)
                    preparing.add(statement.name)
                    expected.append(statement.name)
                values = transformer.dump_sequence(
                    [params[key] for key in statement.order],
                    [PyFormat.TEXT] * len(statement.order),
                )
                pgconn.send_query_prepared(statement.name, values, None, _BINARY)
                expected.append(index)
            pgconn.pipeline_sync()
            await self._flush()
            rows: list[Any] = [None] * len(queries)
            error: psycopg.Error | None = None
            for answer in expected:
                result = await self._next_result()
                while await self._next_result() is not None:
                    pass  # a statement's results end with None
                if result is None:
                    continue
                status = result.status
                if status == _FATAL_ERROR:
                    error = error or errors.error_from_result(
                        result, encoding=self._encoding
                    )
                elif isinstance(answer, bytes):
                    if status == _COMMAND_OK:
                        self._prepared.add(answer)
                elif status == _TUPLES_OK:
                    rows[answer] = self._row(queries[answer][0], result, row)
            synced = await self._next_result()
            if synced is None or synced.status != _PIPELINE_SYNC:
                raise psycopg.InterfaceError("the pipeline lost its sync")
        finally:
            if pgconn.status != pq.ConnStatus.BAD:
                pgconn.exit_pipeline_mode()
        if error is not None:
            raise error
        return rows

    def _row(
        self,
        sql: str,
        result: pq.abc.PGresult,
        row: Callable[[str, Any, tuple[Any, ...] | None], Any],
    ) -> Any:
        if result.ntuples == 0:
            return row(sql, result, None)
        self._transformer.set_pgresult(result)
        return row(sql, result, self._transformer.load_row(0, tuple))

    async def _next_result(self) -> pq.abc.PGresult | None:
        pgconn = self._pgconn
        while pgconn.is_busy():
            await self._wait(readable=True)
            pgconn.consume_input()
        return pgconn.get_result()

    async def _flush(self) -> None:
        while self._pgconn.flush():
            await self._wait(readable=False)

    async def _wait(self, *, readable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fileno = self._pgconn.socket

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if readable:
            loop.add_reader(fileno, wake)
        else:
            loop.add_writer(fileno, wake)
        try:
            await ready
        finally:
            if readable:
                loop.remove_reader(fileno)
            else:
                loop.remove_writer(fileno)


def result_names(result: Any) -> list[str]:
    """The column names of a libpq result."""
    return [result.fname(index).decode() for index in range(result.nfields)]
