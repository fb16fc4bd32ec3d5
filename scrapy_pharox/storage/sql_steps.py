"""Operations as steps: a generator of queries that gets each query's first row.

An operation is written once this way and either runner drives it: the lane's
blocking one (``sql_lane``) or the rounds on the running loop (``sql_rounds``).
A driver error of a query is thrown into the generator.
"""

from __future__ import annotations

import logging
import select
from collections import namedtuple
from collections.abc import Callable, Generator, Mapping
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from ..models import Lease
from . import sql_expiry as expiry
from .sql_clauses import Prepared
from .sql_rows import lease_from_row

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: A generator of queries that receives each query's first row (or None), and
#: returns the operation's result. A driver error of a query is thrown into it.
Steps = Generator["Query", Any, T]


#: Tries of one acquire while its statement found only rows others hold locked.
ACQUIRE_ROUNDS = 32


class Query:
    """One prepared statement with its parameters.

    ``order`` is where it goes in a pipelined round (see ``sql_rounds``); None
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


#: Round order: releases first, by proxy id, then acquires (see ``sql_rounds``).
_RELEASE, _ACQUIRE = 0, 1


def connection_lost(conn: Any) -> bool:
    return bool(conn.broken or conn.info.status == _BAD)


def reusable(conn: Any) -> bool:
    """A statement's error leaves an autocommit connection as good as new; a lost
    connection or a wait cancelled mid-statement does not."""
    return (
        not connection_lost(conn) and conn.info.transaction_status == _IDLE_TRANSACTION
    )


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
            yield Query(expiry.pg_reclaim(), {})
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
    return Prepared(expiry.lease_with_proxy())


def release_steps(
    statement: Prepared, params: dict[str, Any], proxy_id: UUID
) -> Steps[bool]:
    """One release: whether the statement released the lease (it was active)."""
    row = yield Query(statement, params, (_RELEASE, str(proxy_id)))
    return bool(row.released)


_IDLE_TRANSACTION = psycopg.pq.TransactionStatus.IDLE


_BAD = psycopg.pq.ConnStatus.BAD


#: The row type of each statement run, by its SQL: psycopg's namedtuple_row
#: would work the names out again for every row.
_row_types: dict[str, Callable[[Any], Any]] = {}


def named_row(query: Query, cursor: Any, values: tuple[Any, ...] | None) -> Any:
    """A row of ``query`` with its columns as attributes, or None."""
    if values is None:
        return None
    make = _row_types.get(query.sql)
    if make is None:
        names = [column.name for column in cursor.description]
        row_type: Any = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        make = _row_types[query.sql] = row_type._make
    return make(values)


def usable(conn: Any) -> bool:
    """False for a connection closed, or whose socket has something to read while
    idle: the server closed it (a restart, a cut wire). Costs no round trip."""
    if conn.closed:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable
