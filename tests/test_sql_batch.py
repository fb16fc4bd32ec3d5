"""A round as one simple-protocol query (sql_batch): literals, PREPARE, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from conftest import libpq_url
from sqlalchemy import bindparam, cast, column, literal_column, select, table
from sqlalchemy.types import Boolean, DateTime, Float, Integer, String, Uuid

from loop_support import run_on_a_loop
from scrapy_pharox.storage.sql_batch import Batcher
from scrapy_pharox.storage.sql_query import Prepared, Query

pytestmark = pytest.mark.postgres


def on_a_batcher(
    url: str, scenario: Callable[[Batcher, psycopg.AsyncConnection[Any]], Any]
) -> Any:
    async def run() -> Any:
        conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
        try:
            return await scenario(Batcher(conn), conn)
        finally:
            await conn.close()

    return run_on_a_loop(run())


def echo(type_: Any) -> Prepared:
    """A statement giving back its one parameter, cast to ``type_`` (the server
    infers a parameter's type from the SQL: uncast, it would be text)."""
    value = cast(bindparam("value", type_=type_), type_)
    return Prepared(select(value.label("value")))


VALUES = [
    (String(), "it's a \\ back'slash, 100% 'quoted' \u00e9\u4e2d"),
    (String(), ""),
    (Uuid(), uuid4()),
    (Integer(), -7),
    (Float(), 0.1),
    (Float(), -1e300),
    (Float(), math.inf),
    (Boolean(), True),
    (DateTime(timezone=True), datetime(2026, 12, 2, 16, 1, 2, 345678, timezone.utc)),
    (String(), None),
]


def test_values_come_back_as_they_were_sent(postgresql_url: str) -> None:
    async def scenario(batcher: Batcher, _: Any) -> list[Any]:
        queries = [Query(echo(type_), {"value": value}) for type_, value in VALUES]
        return [row.value for row in await batcher.run(queries)]

    assert on_a_batcher(postgresql_url, scenario) == [value for _, value in VALUES]


def test_a_value_that_cannot_be_quoted_fails_its_query_alone(
    postgresql_url: str,
) -> None:
    text = echo(String())

    async def scenario(batcher: Batcher, _: Any) -> list[Any]:
        return await batcher.run(
            [
                Query(text, {"value": "before"}),
                Query(text, {"value": "a\x00b"}),
                Query(text, {"value": "\ud800"}),
                Query(text, {"value": "after"}),
            ]
        )

    before, nul, surrogate, after = on_a_batcher(postgresql_url, scenario)
    assert (before.value, after.value) == ("before", "after")
    assert isinstance(nul, psycopg.DataError) and "NUL" in str(nul)
    assert isinstance(surrogate, psycopg.DataError)


def test_a_failed_round_leaves_the_statements_it_prepared_known(
    postgresql_url: str,
) -> None:
    fine = Prepared(select(literal_column("7").label("value")))
    failing = Prepared(select(literal_column("1 / 0").label("value")))
    missing = Prepared(select(column("id")).select_from(table("no_such_table")))

    async def scenario(batcher: Batcher, conn: Any) -> list[Any]:
        seen = []
        for first, second in [(fine, failing), (missing, fine)]:
            with pytest.raises(psycopg.errors.DatabaseError):
                await batcher.run([Query(first, {}), Query(second, {})])
            # Each again on its own, as the rounds do; then the fine one in a
            # round of its own: PREPARE neither missing nor repeated.
            for statement in (first, second):
                try:
                    seen.append((await batcher.run([Query(statement, {})]))[0])
                except psycopg.Error as exc:
                    seen.append(type(exc))
        seen.append((await batcher.run([Query(fine, {}), Query(fine, {})]))[1])
        return seen

    seen = on_a_batcher(postgresql_url, scenario)
    values = [getattr(row, "value", row) for row in seen]
    assert values == [
        7,
        psycopg.errors.DivisionByZero,
        psycopg.errors.UndefinedTable,
        7,
        7,
    ]


def test_statements_deallocated_behind_its_back_are_prepared_again(
    postgresql_url: str,
) -> None:
    fine = Prepared(select(literal_column("7").label("value")))

    async def scenario(batcher: Batcher, conn: Any) -> list[Any]:
        first = (await batcher.run([Query(fine, {})]))[0]
        await conn.execute("DEALLOCATE ALL")  # a connection reset, say
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            await batcher.run([Query(fine, {})])
        # The failure says the statement is gone: the next round prepares it.
        return [first, (await batcher.run([Query(fine, {})]))[0]]

    assert [row.value for row in on_a_batcher(postgresql_url, scenario)] == [7, 7]
