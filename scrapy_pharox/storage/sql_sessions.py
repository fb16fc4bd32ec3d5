"""The session primitives of the SQL adapters: each a statement or two, the same
for both dialects (but for the dialect's INSERT ... ON CONFLICT), run by the
one executor. Sessions are rare next to leases: blocking path only.

A write is a compare and set in one statement: the insert does nothing where
the key has a row (ON CONFLICT DO NOTHING waits for a concurrent insert of it
to commit, then sees it), the update matches only the expected generation (and
lease); RETURNING says whether it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import EllipsisType
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from sqlalchemy import Select, bindparam, delete, exists, select, update
from sqlalchemy.sql.dml import ReturningDelete, ReturningUpdate

from ..exceptions import PoolNotFoundError, ProxyNotFoundError
from ..models import (
    ProxySession,
    build_trusted,
    check_session_key,
    cookies_from_json,
    cookies_to_json,
)
from .sessions import SessionStorage
from .sql_admin import insert_ignoring_conflicts
from .sql_clauses import pool, pool_id_named, proxy
from .sql_query import ALL, FIRST, Steps
from .sql_rows import proxy_from_row, utc
from .sql_schema import pool_table, proxy_table, session_table

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

    from .sql_executor import Executor
    from .sql_query import Query

session = session_table.c

#: The columns a write sets, beside the row's key (pool_id, key).
_WRITTEN = (
    "generation", "proxy_id", "lease_id", "consumer_id", "lease_expires_at",
    "uses", "created_at", "last_used_at", "cookies",
)  # fmt: skip


# -- statements ----------------------------------------------------------------------


@cache
def sessions_of_pool(one: bool) -> Select[Any]:
    """The sessions of pool ``pool_name`` (``one``: only ``session_key``) by
    key, each with its pool's name and its proxy's row (NULLs for none)."""
    query = (
        select(
            pool.name.label("pool_name"),
            *(session[name] for name in ("key", *_WRITTEN)),
            *proxy_table.c,
        )
        .select_from(
            session_table.join(pool_table, pool.id == session.pool_id).outerjoin(
                proxy_table, proxy.id == session.proxy_id
            )
        )
        .where(pool.name == bindparam("pool_name"))
        .order_by(session.key)
    )
    return query.where(session.key == bindparam("session_key")) if one else query


@cache
def pool_and_proxy() -> Select[Any]:
    """The id of pool ``pool_name`` and whether the proxy ``proxy_id`` is in
    it; no row for an unknown pool."""
    proxy_known = exists().where(
        proxy.id == bindparam("proxy_id", type_=proxy.id.type),
        proxy.pool_id == pool.id,
    )
    return select(pool.id, proxy_known.label("proxy_known")).where(
        pool.name == bindparam("pool_name")
    )


@cache
def insert_session(dialect_name: str) -> Any:
    """The session's row (a parameter per column), unless the key has one; its
    key when inserted."""
    return insert_ignoring_conflicts(dialect_name, session_table).returning(session.key)


@cache
def update_session(fenced_by_lease: bool) -> ReturningUpdate[Any]:
    """The row of (``pool_key``, ``session_key``) rewritten (a parameter per
    column written) if its generation is ``expected_generation`` and, when
    ``fenced_by_lease``, its lease ``expected_lease_id`` (NULL: parked); its
    key when rewritten."""
    fence = [
        session.pool_id == bindparam("pool_key", type_=session.pool_id.type),
        session.key == bindparam("session_key"),
        session.generation == bindparam("expected_generation"),
    ]
    if fenced_by_lease:
        expected = bindparam("expected_lease_id", type_=session.lease_id.type)
        fence.append(session.lease_id.is_not_distinct_from(expected))
    return (
        update(session_table)
        .where(*fence)
        .values({name: bindparam(name, type_=session[name].type) for name in _WRITTEN})
        .returning(session.key)
    )


@cache
def delete_session(fenced: bool) -> ReturningDelete[Any]:
    """The row of session ``session_key`` of pool ``pool_name`` deleted (when
    ``fenced``, only of generation ``expected_generation``); its key if it was."""
    where = [
        session.pool_id == pool_id_named(),
        session.key == bindparam("session_key"),
    ]
    if fenced:
        where.append(session.generation == bindparam("expected_generation"))
    return delete(session_table).where(*where).returning(session.key)


# -- rows ---------------------------------------------------------------------------


def session_from_row(row: Any) -> ProxySession:
    expires = row.lease_expires_at
    return build_trusted(
        ProxySession,
        {
            "pool_name": row.pool_name,
            "key": row.key,
            "generation": row.generation,
            "proxy_id": row.proxy_id,
            "lease_id": row.lease_id,
            "consumer_id": row.consumer_id,
            "lease_expires_at": None if expires is None else utc(expires),
            "uses": row.uses,
            "created_at": utc(row.created_at),
            "last_used_at": utc(row.last_used_at),
            "cookies": cookies_from_json(row.cookies),
            "proxy": None if row.id is None else proxy_from_row(row),
        },
    )


def session_values(stored: ProxySession, cookies: str) -> dict[str, Any]:
    """The written columns of a session, its cookies as JSON text."""
    values = {name: getattr(stored, name) for name in _WRITTEN}
    values["cookies"] = cookies
    return values


# -- the primitives -----------------------------------------------------------------


class SqlSessions(SessionStorage):
    """The session primitives of ``SqlStorage``."""

    if TYPE_CHECKING:
        dialect: ClassVar[Dialect]
        _executor: Executor

        def _query(
            self, statement: Any, values: Mapping[str, Any], *, rows: bool = FIRST
        ) -> Query: ...

    def get_session(self, pool_name: str, key: str) -> ProxySession | None:
        params = {"pool_name": pool_name, "session_key": check_session_key(key)}

        def steps(_: bool) -> Steps[ProxySession | None]:
            row = yield self._query(sessions_of_pool(True), params)
            return None if row is None else session_from_row(row)

        return self._executor.run("reading a session", steps, read_only=True)

    def put_session(
        self,
        session: ProxySession,
        expected_generation: int | None,
        *,
        expected_lease_id: UUID | EllipsisType | None = ...,
    ) -> bool:
        check_session_key(session.key)
        values = session_values(session, cookies_to_json(session.cookies))
        place = {"pool_name": session.pool_name, "proxy_id": session.proxy_id}

        def steps(retrying: bool) -> Steps[bool]:
            found = yield self._query(pool_and_proxy(), place)
            if found is None:
                raise PoolNotFoundError(f"no pool named {session.pool_name!r}")
            if not found.proxy_known:
                raise ProxyNotFoundError(
                    f"no proxy with id {session.proxy_id} in pool {session.pool_name!r}"
                )
            if expected_generation is None:
                row_key = {"pool_id": found.id, "key": session.key}
                statement = insert_session(self.dialect.name)
            else:
                row_key = {
                    "pool_key": found.id,
                    "session_key": session.key,
                    "expected_generation": expected_generation,
                }
                if expected_lease_id is not ...:
                    row_key["expected_lease_id"] = expected_lease_id
                statement = update_session(expected_lease_id is not ...)
            if (yield self._query(statement, {**values, **row_key})) is not None:
                return True
            if not retrying:
                return False
            # The try whose reply was lost may have written it: is it there?
            stored = yield self._query(
                sessions_of_pool(True),
                {"pool_name": session.pool_name, "session_key": session.key},
            )
            return stored is not None and all(
                getattr(session_from_row(stored), name) == getattr(session, name)
                for name in ("generation", "lease_id", "uses", "last_used_at")
            )

        return self._executor.run("writing a session", steps, atomic=True)

    def delete_session(
        self, pool_name: str, key: str, generation: int | None = None
    ) -> bool:
        params = {
            "pool_name": pool_name,
            "session_key": check_session_key(key),
            "expected_generation": generation,
        }

        def steps(_: bool) -> Steps[bool]:
            row = yield self._query(delete_session(generation is not None), params)
            return row is not None

        return self._executor.run("deleting a session", steps)

    def list_sessions(self, pool_name: str) -> list[ProxySession]:
        def steps(_: bool) -> Steps[list[ProxySession]]:
            rows = yield self._query(
                sessions_of_pool(False), {"pool_name": pool_name}, rows=ALL
            )
            return [session_from_row(row) for row in rows]

        return self._executor.run("listing sessions", steps, read_only=True)
