"""The live-list primitives of the SQL adapters: one statement each, the same
for both dialects (but for the dialect's INSERT ... ON CONFLICT), run by the
one executor. A refresh is rare: blocking path only.

The claim is an upsert that takes the row only where it is free (no row, an
expired claim, or the holder's own), so two processes never both hold it;
RETURNING says whether it did. The state is written fenced by the holder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from sqlalchemy import Double, Select, Text, bindparam, literal_column, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.sql.dml import ReturningUpdate

from ..exceptions import PoolNotFoundError
from .sources import SourceState, SourceStorage, check_claim
from .sql_admin import dialect_insert, pool_named
from .sql_clauses import DbNow, DbNowPlus, pool, pool_id_named
from .sql_query import FIRST, Steps
from .sql_schema import source_table

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

    from .sql_executor import Executor
    from .sql_query import Query

source = source_table.c


# -- statements ----------------------------------------------------------------------


@cache
def claim_refresh(dialect_name: str) -> Any:
    """The claim of pool ``pool_name`` for ``holder`` until ``seconds`` from
    now, taken where it is free (no row: an empty state; an expired claim or
    the holder's own: the state kept); the pool's id when taken, no row when
    another holds it or the pool is unknown."""
    empty = literal_column("'[]'", Text)
    claim = dialect_insert(dialect_name, source_table).from_select(
        ["pool_id", "holder", "claimed_until", "listed", "withdrawn"],
        # A WHERE here also keeps SQLite from reading ON CONFLICT as a join's.
        select(
            pool.id,
            bindparam("holder", type_=Text()),
            DbNowPlus(bindparam("seconds", type_=Double())),
            empty,
            empty,
        ).where(pool.name == bindparam("pool_name")),
    )
    return claim.on_conflict_do_update(
        index_elements=[source.pool_id],
        set_={
            "holder": claim.excluded.holder,
            "claimed_until": claim.excluded.claimed_until,
        },
        where=or_(
            source.holder == claim.excluded.holder, source.claimed_until <= DbNow()
        ),
    ).returning(source.pool_id)


@cache
def source_state() -> Select[Any]:
    """The list state of pool ``pool_name``; no row when none was saved."""
    return select(source.listed, source.withdrawn).where(
        source.pool_id == pool_id_named()
    )


@cache
def save_source_state() -> ReturningUpdate[Any]:
    """The state of pool ``pool_name`` set to ``listed`` and ``withdrawn`` if
    ``holder`` holds its claim; the pool's id when written."""
    return (
        sql_update(source_table)
        .where(source.pool_id == pool_id_named(), source.holder == bindparam("holder"))
        .values(listed=bindparam("listed"), withdrawn=bindparam("withdrawn"))
        .returning(source.pool_id)
    )


def _ids_json(ids: frozenset[UUID]) -> str:
    return json.dumps(sorted(str(proxy_id) for proxy_id in ids))


def _ids(text: str) -> frozenset[UUID]:
    return frozenset(UUID(proxy_id) for proxy_id in json.loads(text))


# -- the primitives -----------------------------------------------------------------


class SqlSources(SourceStorage):
    """The live-list primitives of ``SqlStorage``."""

    if TYPE_CHECKING:
        dialect: ClassVar[Dialect]
        _executor: Executor

        def _query(
            self, statement: Any, values: Mapping[str, Any], *, rows: bool = FIRST
        ) -> Query: ...

    def claim_refresh(self, pool_name: str, holder: str, seconds: float) -> bool:
        params = {
            "pool_name": pool_name,
            "holder": holder,
            "seconds": check_claim(holder, seconds),
        }

        def steps(_: bool) -> Steps[bool]:
            # A retry of a lost reply renews the holder's own claim: the same.
            if (yield self._query(claim_refresh(self.dialect.name), params)):
                return True
            if (yield self._query(pool_named(), params)) is None:
                raise PoolNotFoundError(f"no pool named {pool_name!r}")
            return False

        return self._executor.run("claiming a refresh", steps)

    def get_source_state(self, pool_name: str) -> SourceState:
        def steps(_: bool) -> Steps[SourceState]:
            row = yield self._query(source_state(), {"pool_name": pool_name})
            if row is None:
                return SourceState()
            return SourceState(_ids(row.listed), _ids(row.withdrawn))

        return self._executor.run("reading a list state", steps, read_only=True)

    def put_source_state(self, pool_name: str, holder: str, state: SourceState) -> bool:
        params = {
            "pool_name": pool_name,
            "holder": holder,
            "listed": _ids_json(state.listed),
            "withdrawn": _ids_json(state.withdrawn),
        }

        def steps(_: bool) -> Steps[bool]:
            row = yield self._query(save_source_state(), params)
            return row is not None

        return self._executor.run("saving a list state", steps)
