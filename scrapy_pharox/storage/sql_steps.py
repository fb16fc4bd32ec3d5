"""PostgreSQL's acquire and release as steps (see ``sql_query.Steps``).

Either runner of the executor drives them: blocking on a psycopg connection
(``sql_psycopg``) or in the rounds on the running loop (``sql_rounds``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from ..models import Lease, Paced
from . import sql_expiry as expiry
from .sql_expiry import taken_before
from .sql_query import POSTGRESQL, Prepared, Query, Steps
from .sql_rows import lease_from_row, paced_or_none

#: Tries of one acquire while its statement found only rows others hold locked.
ACQUIRE_ROUNDS = 32


#: Round order: releases first, by proxy id, then acquires, then extensions by
#: lease id (see ``sql_rounds``).
_RELEASE, _ACQUIRE, _EXTEND = 0, 1, 2


def acquire_steps(
    statement: Prepared,
    params: dict[str, Any],
    retrying: bool,
    flags: Callable[[], Prepared | None],
) -> Steps[Lease | Paced | None]:
    """One acquire: the statement again while it found only rows others hold
    locked, after reclaiming expired leases when some block the way. After a
    miss, ``flags()`` is the statement that says which (``sql_leasing.
    pg_acquire_flags``; None: the acquire's row says it).

    A retry first looks for the lease its lost try may have taken: the lease id
    is the caller's, so a reply lost on the wire never leaks a slot.
    """
    if (
        retrying
        and (lease := (yield from taken_before(POSTGRESQL, params))) is not None
    ):
        return lease
    for _ in range(ACQUIRE_ROUNDS):
        try:
            row = yield Query(statement, params, (_ACQUIRE, ""))
        except psycopg.IntegrityError:
            # The lease id exists: a lost first try committed it after all.
            if (
                retrying
                and (lease := (yield from taken_before(POSTGRESQL, params))) is not None
            ):
                return lease
            raise
        if row is not None and row.id is not None:  # None: a miss (not PACED)
            return lease_from_row(row, params, params["pool_name"])
        asked = flags()
        if asked is not None:
            row = yield Query(asked, params, (_ACQUIRE, ""))
        assert row is not None  # the flags, or a PACED acquire's one row
        if row.reclaim_needed:
            yield Query(expiry.pg_reclaim(), {})
        elif not row.contended:
            return paced_or_none(row)
    return None


def release_steps(
    statement: Prepared, params: dict[str, Any], proxy_id: UUID
) -> Steps[bool]:
    """One release: whether the statement released the lease (it was active:
    a row came back)."""
    row = yield Query(statement, params, (_RELEASE, str(proxy_id)))
    return row is not None and bool(row.released)


def extend_steps(params: dict[str, Any], lease_id: UUID) -> Steps[datetime | None]:
    """One extension (``sql_expiry.extend_steps``), in a round's order."""
    return expiry.extend_steps(POSTGRESQL, params, (_EXTEND, str(lease_id)))
