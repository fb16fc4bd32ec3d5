"""The statements that end a lease: PostgreSQL's release (one statement, which
also tells the fleet through a notice), the pieces the outcome and reclaim
statements share (the lease leaving the active table, its history row), and
SQLite's release steps. Split from ``sql_leasing`` for size; its conventions
hold.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Insert,
    String,
    Text,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningDelete

from .sql_clauses import DbNow, _prepared, lease, proxy
from .sql_leasing import _bound
from .sql_schema import lease_history_table, lease_table, proxy_table

# -- release ------------------------------------------------------------------------


@_prepared
def pg_release() -> Insert:
    """Release the lease ``lease_id`` (of pool ``pool_name``) if it is still
    active; a row (``released``) if it was, none if not.

    A lease leaves the active table when it is released or reclaimed, so a
    second or late release matches no row and changes nothing.
    """
    gone = removed_lease()
    # Its slot is given back (and the fleet told, when that frees one) ...
    freed = freed_slot(gone, {})
    # ... and it is kept in the history: the statement itself.
    return logged_release(gone).add_cte(freed)


def freed_slot(gone: Any, values: dict[str, Any]) -> Any:
    """The UPDATE (a CTE) that gives the slot of the lease ``gone`` (one row at
    most) back to its proxy, with ``values`` of the outcome, and tells the
    fleet (``told``). The proxy and the lease id are values read from
    ``gone``, not a join of it: a join carries the whole row of ``gone``."""
    return (
        update(proxy_table)
        .where(proxy.id == select(gone.c.proxy_id).scalar_subquery())
        .values(current_leases=proxy.current_leases - 1, **values)
        .returning(told(select(gone.c.id).scalar_subquery()))
        .cte("freed")
    )


def logged_release(gone: Any) -> Insert:
    """The history row of the released lease ``gone``, returning
    ``released`` (true): no row when the lease was no longer active. The
    release's statement: no scan of ``gone`` again to say whether it was."""
    return _logged(gone, "released").returning(literal_column("true").label("released"))


#: The channel of release notices: every process listening there hears, at
#: its commit, of a release that made a proxy available again
#: (``pg_release_feed``).
RELEASE_CHANNEL = "pharox_release"


def told(lease_id: Any) -> Any:
    """For the RETURNING of the UPDATE that gives the slot of lease
    ``lease_id`` (an expression) back: when that brought the proxy back under
    its limit, a notice of it on ``RELEASE_CHANNEL``, sent at commit:
    ``[schema, pool name, lease id]``, the pool's name the ``pool_name``
    parameter (the lease's own). In the RETURNING, not in a subquery of its
    own: the server sets up every node of a plan on every run, and that
    subquery, with its join of the pool row, cost some 6% of the server's
    instructions per acquire and release.

    Only such a release wakes anyone: a request waits when no proxy had a free
    slot for it, so a slot given back on a proxy that had one left (or has no
    limit) frees nothing it waits for. Reuse delays and cooldowns end with
    time, not with a release: their waiters sleep until then, or poll.

    The lease id keeps each notice apart: PostgreSQL folds identical notices of
    one transaction into one, and a round releases several leases of a pool.
    """
    notice = func.json_build_array(
        func.current_schema(), bindparam("pool_name", type_=String), lease_id
    )
    # RETURNING sees the row as updated: full before, one below its limit now.
    was_full = proxy.max_concurrency == proxy.current_leases + literal_column("1")
    return case(
        (was_full, func.pg_notify(RELEASE_CHANNEL, notice.cast(Text))),
        else_=null(),
    ).label("told")


def removed_lease() -> Any:
    """The lease ``lease_id`` leaving the active table, returned (a CTE). A
    lease leaves it when released or reclaimed: a second or late release
    matches no row, and every change that hangs off it changes nothing."""
    return (
        delete(lease_table)
        .where(lease.id == bindparam("lease_id"))
        .returning(*lease_table.c)
        .cte("gone")
    )


def logged_leases(gone: Any, outcome: str) -> Any:
    """The history rows of the leases ``gone`` returned (a CTE)."""
    return (
        _logged(gone, outcome)
        .returning(lease_history_table.c.id)
        .cte(f"logged_{outcome}")
    )


def _logged(gone: Any, outcome: str) -> Insert:
    return insert(lease_history_table).from_select(
        [*_LEASE_COLUMNS, "released_at", "outcome"],
        select(
            *(gone.c[name] for name in _LEASE_COLUMNS),
            DbNow(),
            literal(outcome),
        ),
    )


_LEASE_COLUMNS = [column.name for column in lease_table.c]


@cache
def remove_lease() -> ReturningDelete[Any]:
    """The active lease ``lease_id`` leaves the active table, returned."""
    return (
        delete(lease_table)
        .where(lease.id == bindparam("lease_id"))
        .returning(*lease_table.c)
    )


@cache
def give_back_slots() -> Update:
    """Proxy ``proxy_key`` gets ``slots`` slots back."""
    return (
        update(proxy_table)
        .where(proxy.id == bindparam("proxy_key", type_=proxy.id.type))
        .values(current_leases=proxy.current_leases - bindparam("slots"))
    )


@cache
def log_leases(outcome: str) -> Insert:
    """History rows (parameters: the lease columns), ended now with ``outcome``."""
    return insert(lease_history_table).values(
        **_bound(lease_history_table, *_LEASE_COLUMNS),
        released_at=DbNow(),
        outcome=outcome,
    )
