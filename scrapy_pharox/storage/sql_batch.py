"""A round of queries as one simple-protocol query (for ``sql_rounds``).

psycopg's pipeline runs a generator with a send of its own, and a check of the
results, for every statement: a round of two cost more client CPU than two
statements did on the hand-written libpq pipeline it replaced. Here a round is
one string, sent with one write: each query is ``EXECUTE name(literal, ...)``
of its statement, prepared on the connection with ``PREPARE`` the first time a
round needs it (prefixed to that round), its parameters quoted client-side as
psycopg's ``ClientCursor`` quotes them; the statements joined by ";" go as one
simple-protocol Query, which PostgreSQL runs in one implicit transaction, and
each statement's rows come back as one of the cursor's result sets. Prepared,
the server plans a statement once per connection, not once per run.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar
from uuid import UUID

import psycopg

from .sql_psycopg import connection_lost
from .sql_query import ALL, Query

# SQLAlchemy's psycopg dialect writes parameters as %(name)s and a percent
# sign as %%.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


#: The errors of a statement the server does not hold (26000), or holds
#: already (42P05): the statements it holds are not those we think.
_PREPARED_STATEMENTS_CHANGED = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)


class ServerStatement:
    """A statement as PostgreSQL prepares it: its name on every connection,
    its PREPARE (parameters as $n), and the start of an EXECUTE of it."""

    __slots__ = ("execute", "name", "names", "prepare")

    _known: ClassVar[dict[str, ServerStatement]] = {}

    def __init__(self, pyformat_sql: str, name: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            key = match.group(1)
            if key is None:
                return "%"
            if key not in names:
                names.append(key)
            return f"${names.index(key) + 1}"

        body = _PLACEHOLDER.sub(number, pyformat_sql)
        self.name = name
        self.names = tuple(names)
        # The server infers each parameter's type from the SQL (the dialect
        # casts binds: %(lease_id)s::UUID); the literals are coerced to it.
        self.prepare = f"PREPARE {name} AS {body}"
        self.execute = f"EXECUTE {name}(" if names else f"EXECUTE {name}"

    @classmethod
    def of(cls, pyformat_sql: str) -> ServerStatement:
        """The statement of that SQL, converted once per process."""
        statement = cls._known.get(pyformat_sql)
        if statement is None:
            name = f"pharox_{len(cls._known)}"
            statement = cls._known[pyformat_sql] = cls(pyformat_sql, name)
        return statement


class Batcher:
    """Rounds on one connection: the statements it prepared, and its cursor."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._cursor = psycopg.AsyncClientCursor(conn)
        self._prepared: set[str] = set()
        self._encoding = conn.info.encoding
        # Strings are quoted here only where a quote is all they escape.
        self._plain_strings = (
            conn.info.parameter_status("standard_conforming_strings") == "on"
            and self._encoding == "utf-8"
        )

    async def run(self, queries: list[Query]) -> list[Any]:
        """Each query's result (``Query.result``) in one round trip, or the
        error of a query psycopg refused to quote (a NUL byte in a text value:
        nothing of it was sent, so the error is that query's own). A server's
        error raises: the round's transaction rolled back as a whole."""
        outcomes: list[Any] = []
        texts: list[str] = []
        prepares: dict[str, str] = {}
        for query in queries:
            statement = ServerStatement.of(query.sql)
            try:
                texts.append(self._execute_text(statement, query.params))
            except psycopg.Error as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)
            if statement.name not in self._prepared:
                prepares[statement.name] = statement.prepare
        if not texts:
            return outcomes
        cursor = self._cursor
        try:
            await cursor.execute(";".join([*prepares.values(), *texts]))
        except psycopg.Error as exc:
            if (
                prepares or isinstance(exc, _PREPARED_STATEMENTS_CHANGED)
            ) and not connection_lost(cursor.connection):
                # PREPARE is not undone by the rollback: the ones before the
                # failing statement stand. And a DEALLOCATE (a DISCARD ALL of a
                # connection reset) may have dropped some behind our back. Ask
                # the server which it holds.
                await self._prepared_on_server()
            raise
        self._prepared.update(prepares)
        for _ in prepares:
            cursor.nextset()
        first = True
        for index, query in enumerate(queries):
            if outcomes[index] is not None:
                continue
            if not first:
                cursor.nextset()
            first = False
            outcomes[index] = await _result(cursor, query)
        return outcomes

    def _execute_text(self, statement: ServerStatement, params: dict[str, Any]) -> str:
        if not statement.names:
            return statement.execute
        quote = self._quote
        arguments = ", ".join([quote(params[name]) for name in statement.names])
        text = f"{statement.execute}{arguments})"
        try:
            text.encode(self._encoding)
        except UnicodeEncodeError as exc:  # a lone surrogate, say
            raise psycopg.DataError(f"a parameter cannot be encoded: {exc}") from exc
        return text

    def _quote(self, value: Any) -> str:
        """``value`` as a SQL literal, as psycopg's ClientCursor writes it.

        The types of the hot statements' parameters are written here: psycopg
        spends some 10,000 instructions on each (its UUID adapter is Python),
        as much as the rest of a statement's run. Any other goes to psycopg.
        """
        kind = type(value)
        if kind is UUID:
            return f"'{value}'::uuid"
        if kind is str and self._plain_strings:
            if "\x00" in value:
                raise psycopg.DataError(
                    "PostgreSQL text fields cannot contain NUL (0x00) bytes"
                )
            # With standard_conforming_strings on, a quote is the only
            # character a string literal escapes (by doubling it).
            escaped: str = value.replace("'", "''")
            return f"'{escaped}'"
        if kind is int:  # exactly int: a bool is written by psycopg
            return str(value)
        if value is None:
            return "NULL"
        if kind is float and math.isfinite(value):
            return repr(value)
        quoted: str = self._cursor.mogrify("%s", (value,))
        return quoted

    async def _prepared_on_server(self) -> None:
        cursor = self._cursor
        await cursor.execute("SELECT name FROM pg_prepared_statements")
        self._prepared = {name for (name,) in await cursor.fetchall()}


async def _result(cursor: psycopg.AsyncClientCursor[Any], query: Query) -> Any:
    """What the query's steps get from the cursor's current result set."""
    returns_rows = query.statement.returns_rows
    if returns_rows is False or (returns_rows is None and not cursor.description):
        return None  # a statement without rows
    if query.rows is ALL:
        return query.result(cursor, await cursor.fetchall())
    return query.result(cursor, await cursor.fetchone())
