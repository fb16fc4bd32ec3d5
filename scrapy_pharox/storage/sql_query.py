"""Statements compiled once for a dialect, and the queries that run them.

SQLAlchemy builds every statement of the SQL adapters and runs none of them:
``Prepared`` compiles a statement once for PostgreSQL (psycopg) or SQLite, with
the conversions its parameters and columns need (SQLite keeps UUIDs as text and
times as integer microseconds; PostgreSQL's statements need none), and a
``Query`` is one run of it, which the storage's executor (``sql_executor``)
hands to the driver.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.types import Float

#: The dialects statements are compiled for, once each.
POSTGRESQL: Dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
SQLITE: Dialect = sqlite.pysqlite.dialect(paramstyle="named")

# psycopg caches the parsing of queries up to this length only
# (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH).
PSYCOPG_CACHED_QUERY_BYTES = 4096

Convert = Callable[[Any], Any]

T = TypeVar("T")

#: An operation's steps: a generator of queries that receives each query's
#: result (``Query.rows``) and returns the operation's result. A driver error
#: of a query is thrown into it.
Steps = Generator["Query", Any, T]


class Prepared:
    """A statement compiled once for a dialect, run as the driver's SQL.

    SQLAlchemy computes a cache key on every execution of a statement object,
    and for the acquire CTE that costs more than the round trip; compiled SQL
    skips it. The values bound in when it was built (literals) are kept; the
    rest come per run, converted for the dialect where its type says so. On
    SQLite the columns of a row are converted back (``row``); PostgreSQL rows
    come as psycopg builds them. Keep a PostgreSQL statement under
    ``PSYCOPG_CACHED_QUERY_BYTES``: psycopg parses a longer one again on every
    run, which costs about as much as the round trip.
    """

    __slots__ = (
        "_columns",
        "_converters",
        "_literals",
        "_make_row",
        "returns_rows",
        "sql",
    )

    def __init__(self, statement: ClauseElement, dialect: Dialect = POSTGRESQL):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        binds = getattr(compiled, "binds", {})  # DDL binds nothing
        self._converters: dict[str, Convert] = {}
        literals: dict[str, Any] = {}
        for name, bind in binds.items():
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required and bind.value is not None:
                literals[name] = convert(bind.value) if convert else bind.value
            elif convert is not None:
                self._converters[name] = convert
        self._literals = literals
        self._columns = _column_converters(statement, dialect)
        self._make_row: Callable[[Sequence[Any]], Any] | None = None
        #: Whether a run gives rows (None: known from the cursor only, for text).
        self.returns_rows: bool | None = (
            bool(statement.exported_columns)
            if hasattr(statement, "exported_columns")
            else None
        )

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The statement's parameters: ``values``, converted, and its literals."""
        params = {**values, **self._literals}
        for name, convert in self._converters.items():
            if name in params:
                params[name] = convert(params[name])
        return params

    def row(self, cursor: Any, values: Sequence[Any] | None) -> Any:
        """A row of this statement with its columns as attributes, or None.

        The cursor's description is read for the first row only: psycopg builds
        it anew on every read, which costs more than the row.
        """
        if values is None:
            return None
        make = self._make_row
        if make is None:
            names = [column[0] for column in cursor.description]
            row_type: Any = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            make = self._make_row = row_type._make
        if self._columns is not None:
            values = [
                value if convert is None or value is None else convert(value)
                for convert, value in zip(self._columns, values, strict=True)
            ]
        return make(values)


def _column_converters(
    statement: ClauseElement, dialect: Dialect
) -> list[Convert | None] | None:
    """The result conversions of a SQLite statement's columns, in order (None:
    none needed)."""
    if dialect.name != "sqlite":
        return None
    columns = getattr(statement, "exported_columns", ())
    converters = [_converter(column.type, dialect) for column in columns]
    return converters if any(converters) else None


def _converter(column_type: Any, dialect: Dialect) -> Convert | None:
    convert: Convert | None = column_type.dialect_impl(dialect).result_processor(
        dialect, None
    )
    if convert is None and isinstance(column_type, Float):
        # SQLite's RETURNING gives a REAL column's whole numbers back as int.
        return float
    return convert


_compiled: dict[str, WeakKeyDictionary[ClauseElement, Prepared]] = {}


def prepared(statement: ClauseElement, dialect: Dialect) -> Prepared:
    """``statement`` compiled for ``dialect``, once while it lives."""
    known = _compiled.setdefault(dialect.name, WeakKeyDictionary())
    found = known.get(statement)
    if found is None:
        found = known[statement] = Prepared(statement, dialect)
    return found


#: What a query gives its steps back: its first row (or None), or every row.
FIRST, ALL = False, True


class Query:
    """One run of a prepared statement, with its parameters.

    ``order`` is where it goes in a pipelined round (see ``sql_rounds``); None
    keeps it out of rounds: it runs on its own. ``rows`` is ``FIRST`` (the
    steps get the first row, or None) or ``ALL`` (a list of every row).
    """

    __slots__ = ("order", "params", "rows", "sql", "statement")

    def __init__(
        self,
        statement: Prepared,
        values: Mapping[str, Any],
        order: tuple[int, str] | None = None,
        *,
        rows: bool = FIRST,
    ) -> None:
        self.statement = statement
        self.sql = statement.sql
        self.params = statement.parameters(values)
        self.order = order
        self.rows = rows

    def run(self, conn: Any) -> Any:
        """Execute on a DB-API connection (psycopg's, sqlite3's); the result."""
        cursor = conn.execute(self.sql, self.params)
        returns_rows = self.statement.returns_rows
        if returns_rows is False or (returns_rows is None and not cursor.description):
            return None  # a statement without rows
        return self.result(
            cursor, cursor.fetchall() if self.rows is ALL else cursor.fetchone()
        )

    def result(self, cursor: Any, fetched: Any) -> Any:
        """What the steps get: the row or rows ``fetched`` from ``cursor``."""
        if self.rows is ALL:
            return [self.statement.row(cursor, one) for one in fetched]
        return self.statement.row(cursor, fetched)
