"""The statements of expiry: reclaiming expired leases (PostgreSQL's one
statement beside SQLite's step), and the lease a lost reply hid."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Double,
    Select,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import ReturningDelete, ReturningUpdate

from ..models import Lease
from .sql_clauses import (
    DbNow,
    DbNowPlus,
    _prepared,
    lease,
    proxy,
)
from .sql_leasing import locked
from .sql_query import Query, Steps, prepared
from .sql_release import logged_leases
from .sql_rows import lease_from_row, utc
from .sql_schema import (
    lease_table,
    pool_table,
    proxy_table,
)

logger = logging.getLogger(__name__)


@_prepared
def pg_reclaim() -> Select[Any]:
    """Move every expired lease to the history, give back its slot; how many."""
    # Expired leases that no other release or reclaim holds right now.
    doomed = (
        select(lease.id)
        .where(lease.expires_at <= DbNow())
        .with_for_update(skip_locked=True)
        .cte("doomed")
        .prefix_with("MATERIALIZED")
    )
    gone = (
        delete(lease_table)
        .where(lease.id == doomed.c.id)
        .returning(*lease_table.c)
        .cte("gone")
    )
    per_proxy = (
        select(gone.c.proxy_id, func.count().label("expired"))
        .group_by(gone.c.proxy_id)
        .cte("per_proxy")
    )
    # Their proxies, locked in id order, so two reclaims never deadlock.
    locked_proxies = (
        locked(
            select(proxy.id)
            .where(proxy.id.in_(select(per_proxy.c.proxy_id)))
            .order_by(proxy.id),
            skip_locked=False,
        )
        .cte("locked_proxies")
        .prefix_with("MATERIALIZED")
    )
    freed = (
        update(proxy_table)
        .where(
            proxy.id == per_proxy.c.proxy_id, proxy.id.in_(select(locked_proxies.c.id))
        )
        .values(current_leases=proxy.current_leases - per_proxy.c.expired)
        .returning(proxy.id)
        .cte("freed")
    )
    logged = logged_leases(gone, "expired")
    return select(func.count()).select_from(gone).add_cte(freed, logged)


@cache
def remove_expired_leases() -> ReturningDelete[Any]:
    """Every expired lease leaves the active table, returned."""
    return (
        delete(lease_table).where(lease.expires_at <= DbNow()).returning(*lease_table.c)
    )


@cache
def lease_with_proxy() -> Select[Any]:
    """The active lease ``lease_id`` with its proxy row, shaped like an acquire,
    and its pool's name."""
    return (
        select(
            *proxy_table.c,
            lease.acquired_at,
            lease.expires_at,
            pool_table.c.name.label("pool_name"),
        )
        .join_from(lease_table, proxy_table, lease.proxy_id == proxy.id)
        .join(pool_table, pool_table.c.id == lease.pool_id)
        .where(lease.id == bindparam("lease_id"))
    )


def taken_before(dialect: Dialect, params: dict[str, Any]) -> Steps[Lease | None]:
    """The lease ``lease_id`` that a try whose reply was lost took, or None.

    An acquire carries its lease id, so its retry looks for it first: a reply
    lost on the wire never leaks a slot.
    """
    row = yield Query(prepared(lease_with_proxy(), dialect), params)
    if row is None:
        return None
    logger.warning(
        "lease %s was taken by a try whose reply was lost; returning it",
        params["lease_id"],
    )
    return lease_from_row(row, params, row.pool_name)


@cache
def extend_lease() -> ReturningUpdate[Any]:
    """The lease ``lease_id``, unless past its expiry, expires ``seconds`` from
    now; its new expiry (no row: it no longer holds its slot)."""
    return (
        update(lease_table)
        .where(lease.id == bindparam("lease_id"), lease.expires_at > DbNow())
        .values(expires_at=DbNowPlus(bindparam("seconds", type_=Double())))
        .returning(lease.expires_at)
    )


def extend_steps(
    dialect: Dialect, params: dict[str, Any], order: tuple[int, str] | None = None
) -> Steps[datetime | None]:
    """One extension: the lease's new expiry, or None."""
    row = yield Query(prepared(extend_lease(), dialect), params, order)
    return None if row is None else utc(row.expires_at)
