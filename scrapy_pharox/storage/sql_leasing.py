"""The statements of leasing, operation by operation: PostgreSQL's one
statement beside the steps SQLite runs in one ``BEGIN IMMEDIATE`` transaction.
Acquire and create_lease are here; release is in ``sql_release``.

PostgreSQL leases and releases in one statement each (data-modifying CTEs, rows
claimed with ``FOR NO KEY UPDATE SKIP LOCKED``); their text, with why-comments,
is in ``statements/``. SQLite has neither, so its steps run one after another.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Double,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    case,
    exists,
    false,
    insert,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)

from ..models import ProxyFilters, SelectorStrategy
from .sql_clauses import (
    ACTIVE,
    NO_DOMAIN,
    PACED,
    DbNow,
    DbNowPlus,
    _cached_per_filters,
    _prepared,
    domain_cooldowns_now,
    eligible,
    expired_lease_exists,
    has_free_slot,
    in_reuse_delay,
    lease,
    not_cooling,
    paced_in,
    pool,
    pool_id_named,
    proxy,
    selector_order,
    upsert_domain_row,
)
from .sql_query import Prepared
from .sql_schema import (
    domain_cooldown_table,
    lease_table,
    pool_table,
    proxy_table,
)

# -- acquire: PostgreSQL ------------------------------------------------------------


def locked(query: Select[Any], *, skip_locked: bool) -> Select[Any]:
    # FOR NO KEY UPDATE: the row lock an UPDATE of non-key columns takes.
    return query.with_for_update(
        key_share=True, skip_locked=skip_locked, of=proxy_table
    )


@_cached_per_filters
def pg_acquire(
    strategy: SelectorStrategy, filters: ProxyFilters | None, check: int
) -> Prepared:
    """``pg_acquire_statement``, compiled."""
    return Prepared(pg_acquire_statement(strategy, filters, check))


@_cached_per_filters
def pg_acquire_flags(
    strategy: SelectorStrategy, filters: ProxyFilters | None, check: int
) -> Prepared | None:
    """``pg_acquire_flags_statement``, compiled; None for a ``PACED`` acquire,
    whose statement carries its flags itself."""
    if check == PACED:
        return None
    return Prepared(pg_acquire_flags_statement(filters, check))


def pg_acquire_flags_statement(
    filters: ProxyFilters | None, check: int = NO_DOMAIN
) -> Select[Any]:
    """Why an acquire (``pg_acquire_statement``, not ``PACED``) claimed
    nothing, asked after it: ``reclaim_needed``, an expired lease exists;
    ``contended``, a proxy it may lease exists that other transactions held
    locked, so another try may get it. Parameters: pool_name, and
    target_domain with a domain ``check``.

    A statement of its own, not two subplans of the acquire: the server sets
    up every node of a plan on every run, hit or miss, and in the acquire they
    cost a tenth of the server's instructions per acquire and release.
    """
    cooldowns = domain_cooldowns_now(check) if check else None
    flags = select(
        expired_lease_exists().label("reclaim_needed"),
        exists()
        .where(eligible(pool_id_named(), filters, cooldowns))
        .label("contended"),
    )
    return cast("Select[Any]", flags)


def pg_acquire_statement(
    strategy: SelectorStrategy, filters: ProxyFilters | None, check: int = NO_DOMAIN
) -> Select[Any] | Update:
    """Claim a slot, insert the lease, return the proxy row and the lease times.

    Parameters: pool_name, lease_id, consumer_id, seconds; target_domain with a
    domain ``check`` (``sql_clauses.domain_check``), and reuse_delay with
    ``PACED``. No row when it claimed nothing (the claim never runs past an
    expired lease, so reclaiming always comes before the search);
    ``pg_acquire_flags_statement`` then says why. A ``PACED`` acquire gives one
    row always, its id NULL when it claimed nothing, and says why itself, in
    that row: ``reclaim_needed`` (an expired lease
    exists), ``contended`` (a free proxy existed that other transactions held
    locked, or its pick was refused, so another try may get it) and
    ``paced_in`` (when the first free proxy held back by its reuse delay only
    comes out of it; NULL: none is). A ``PACED`` claim stamps the (proxy,
    domain) row's ``leased_at``.
    """
    cooldowns = domain_cooldowns_now(check) if check else None
    if strategy is SelectorStrategy.ROUND_ROBIN:
        # The pool row, locked: round-robin acquires of one pool take turns, and
        # each reads the cursor the one before it left. None while an expired
        # lease waits to be reclaimed: both searches then find nothing (the
        # check runs once here, not once in each; 1.8% of the server's
        # instructions per lease).
        pool_row = (
            select(pool.id, pool.round_robin_cursor)
            .where(pool.name == bindparam("pool_name"), not_(expired_lease_exists()))
            .with_for_update(key_share=True)
            .cte("pool_row")
            .prefix_with("MATERIALIZED")
        )
        pool_id: Any = select(pool_row.c.id).scalar_subquery()
        cursor = select(pool_row.c.round_robin_cursor).scalar_subquery()
        free = eligible(pool_id, filters, cooldowns)
        # The first free proxy after the cursor in id order (an index walk) ...
        after_cursor = (
            locked(
                select(proxy.id, proxy.pool_id)
                .where(free, proxy.id > cursor)
                .order_by(proxy.id),
                skip_locked=True,
            )
            .limit(1)
            .cte("after_cursor")
            .prefix_with("MATERIALIZED")
        )
        # ... or, only when there is none, the first from the start: wrap around.
        from_start = (
            locked(
                select(proxy.id, proxy.pool_id)
                .where(free, not_(exists(select(after_cursor.c.id))))
                .order_by(proxy.id),
                skip_locked=True,
            )
            .limit(1)
            .cte("from_start")
            .prefix_with("MATERIALIZED")
        )
        picked: Any = union_all(
            select(after_cursor.c.id, after_cursor.c.pool_id),
            select(from_start.c.id, from_start.c.pool_id),
        ).cte("picked")
    else:
        pool_id = pool_id_named()
        # The first free proxy in selector order; rows that other transactions
        # hold locked are skipped, not waited for. Nothing is picked while an
        # expired lease waits to be reclaimed.
        picked = (
            locked(
                select(proxy.id, proxy.pool_id)
                .where(
                    eligible(pool_id, filters, cooldowns),
                    not_(expired_lease_exists()),
                )
                .order_by(*selector_order(strategy, None)),
                skip_locked=True,
            )
            .limit(1)
            .cte("picked")
            .prefix_with("MATERIALIZED")
        )
    advance_cursor = strategy is SelectorStrategy.ROUND_ROBIN
    if check != PACED:
        return _lease_picked(picked, advance_cursor=advance_cursor)
    contended: Any = exists().where(eligible(pool_id, filters, cooldowns))
    # PACED: the pick is leased only if its (proxy, domain) row, read as it is
    # now, says it is out of its delay: a search's snapshot may predate
    # another process's paced lease of it (see ``mark_leased``).
    picked_before = picked
    picked = (
        mark_leased("postgresql", picked.c.id, picked, only_if_out=True)
        .returning(domain_cooldown_table.c.proxy_id.label("id"))
        .cte("paced_use")
    )
    # A pick refused there: another try sees why, and passes it over.
    contended = or_(contended, exists(select(picked_before.c.id)))
    claimed, statement = _claim(picked, advance_cursor=advance_cursor)
    # The flags are evaluated only when nothing was claimed. A refused pick
    # is known here only: a PACED acquire's flags stay in its statement.
    nothing_claimed = claimed.c.id.is_(None)
    return statement.add_columns(
        case((nothing_claimed, paced_in(pool_id, filters)), else_=null()).label(
            "paced_in"
        ),
        case((nothing_claimed, expired_lease_exists()), else_=false()).label(
            "reclaim_needed"
        ),
        case((nothing_claimed, contended), else_=false()).label("contended"),
    )


def _lease_picked(picked: Any, *, advance_cursor: bool) -> Update:
    """Lease the proxy ``picked`` names (its ``id`` and ``pool_id``, at most one
    row): the UPDATE of its row is the statement, returning the row and the
    lease times; no row when nothing was picked.

    The server sets up every node of a plan on every run, and that is a third
    of its work per lease. The lease row and the cursor read the pick, not the
    claim's RETURNING, and the claim is the statement itself: no CTE of the
    claim to scan, no one-row join around it (a tenth of the server's
    instructions per lease). The proxy is found by its key (a value, not a
    join).
    """
    picked_id = select(picked.c.id).scalar_subquery()
    # The lease row, timed by the database clock: the same now() as the
    # times returned (one transaction).
    leased = _lease_row(picked).cte("leased")
    statement: Update = (
        update(proxy_table)
        .where(proxy.id == picked_id)
        .values(current_leases=proxy.current_leases + 1)
        .returning(
            # Each column by name, not pharox_proxy.*: PostgreSQL fixes what *
            # stands for when it prepares the statement, and after a column
            # is added (a schema upgrade while crawls run) refuses to run it.
            *proxy_table.c,
            DbNow().label("acquired_at"),
            DbNowPlus(bindparam("seconds", type_=Double())).label("expires_at"),
        )
        .add_cte(leased)
    )
    if advance_cursor:
        # The pool's round-robin cursor moves to the proxy handed out.
        cursor_moved = (
            update(pool_table)
            .where(pool.id == select(picked.c.pool_id).scalar_subquery())
            .values(round_robin_cursor=picked_id)
            .cte("cursor_moved")
        )
        statement = statement.add_cte(cursor_moved)
    return statement


def _lease_row(source: Any) -> Insert:
    """The lease row of the proxy ``source`` holds (its ``id`` and ``pool_id``,
    one row at most), timed by the database clock."""
    return insert(lease_table).from_select(
        ["id", "proxy_id", "pool_id", "consumer_id", "acquired_at", "expires_at"],
        select(
            bindparam("lease_id", type_=lease.id.type),
            source.c.id,
            source.c.pool_id,
            bindparam("consumer_id", type_=lease.consumer_id.type),
            DbNow(),
            DbNowPlus(bindparam("seconds", type_=Double())),
        ).select_from(source),
    )


def _claim(picked: Any, *, advance_cursor: bool) -> tuple[Any, Select[Any]]:
    """Lease the proxy ``picked`` names; the claim CTE and the one-row result
    (a ``PACED`` acquire's flags, and create_lease's, hang off it)."""
    # One more slot of the picked proxy is taken; its new row comes back. The
    # round-robin pick is a UNION ALL of two searches, which the generic plan
    # joined to a scan of every proxy row; as a value (at most one row), the
    # proxy is found by its key.
    target = select(picked.c.id).scalar_subquery() if advance_cursor else picked.c.id
    claimed = (
        update(proxy_table)
        .where(proxy.id == target)
        .values(current_leases=proxy.current_leases + 1)
        .returning(*proxy_table.c)
        .cte("claimed")
    )
    # The lease row, timed by the database clock.
    leased = (
        _lease_row(claimed).returning(lease.acquired_at, lease.expires_at).cte("leased")
    )
    # One row even when nothing was claimed: its NULL id says so. The
    # proxy row as claimed.*: spelled out, it would take the round-robin acquire
    # by domain past PSYCOPG_CACHED_QUERY_BYTES.
    one = select(literal_column("1").label("one")).subquery("one")
    statement = select(
        literal_column(f"{claimed.name}.*"), leased.c.acquired_at, leased.c.expires_at
    ).select_from(one.outerjoin(claimed, true()).outerjoin(leased, true()))
    if advance_cursor:
        # The pool's round-robin cursor moves to the proxy handed out.
        cursor_moved = (
            update(pool_table)
            .where(pool.id == claimed.c.pool_id)
            .values(round_robin_cursor=claimed.c.id)
            .returning(pool.id)
            .cte("cursor_moved")
        )
        statement = statement.add_cte(cursor_moved)
    return claimed, statement


def mark_leased(
    dialect_name: str, proxy_id: Any, source: Any = None, *, only_if_out: bool = False
) -> Any:
    """The (proxy ``proxy_id``, ``target_domain``) row says it was leased now,
    created on the first paced lease (``source``: where ``proxy_id`` comes
    from, a pick that may hold no row).

    ``only_if_out``: an existing row is stamped only while it is neither resting
    nor inside ``reuse_delay``. ON CONFLICT reads the row as committed now, and
    waits for a transaction that is inserting it, whatever the statement's
    snapshot: two processes never both stamp it within the delay.
    """
    return upsert_domain_row(
        dialect_name,
        proxy_id,
        {"consecutive_bans": literal_column("0"), "leased_at": DbNow()},
        {"leased_at": DbNow()},
        source=source,
        where=and_(
            (domain_cooldown_table.c.cooldown_until > DbNow()).is_not(true()),
            in_reuse_delay().is_not(true()),
        )
        if only_if_out
        else None,
    )


# -- acquire: SQLite -----------------------------------------------------------------


@_cached_per_filters
def find_proxy(
    strategy: SelectorStrategy, filters: ProxyFilters | None, check: int
) -> Select[Any]:
    """The proxy the selector picks now, without leasing it."""
    cursor = select(pool.round_robin_cursor).where(pool.name == bindparam("pool_name"))
    cooldowns = domain_cooldowns_now(check) if check else None
    return (
        select(proxy_table)
        .where(eligible(pool_id_named(), filters, cooldowns))
        .order_by(*selector_order(strategy, cursor.scalar_subquery()))
        .limit(1)
    )


@_cached_per_filters
def sqlite_paced_in(
    strategy: SelectorStrategy, filters: ProxyFilters | None, check: int
) -> Select[Any]:
    """``paced_in`` of a paced acquire that found nothing (``sql_clauses``)."""
    return select(paced_in(pool_id_named(), filters).label("paced_in"))


@cache
def sqlite_mark_leased() -> Any:
    """``mark_leased`` of proxy ``proxy_key``."""
    return mark_leased("sqlite", bindparam("proxy_key", type_=proxy.id.type))


@cache
def claim_proxy() -> Update:
    """One more slot of the proxy ``proxy_id`` if it is ACTIVE, not cooling down
    and has one free."""
    return (
        update(proxy_table)
        .where(proxy.id == bindparam("proxy_id"), proxy.status == ACTIVE)
        .where(has_free_slot(), not_cooling())
        .values(current_leases=proxy.current_leases + 1)
        .returning(*proxy_table.c)
    )


@cache
def insert_lease() -> Insert:
    """The lease row (parameters: the columns but the times, and ``seconds``)."""
    return (
        insert(lease_table)
        .values(
            **_bound(lease_table, "id", "proxy_id", "pool_id", "consumer_id"),
            acquired_at=DbNow(),
            expires_at=DbNowPlus(bindparam("seconds", type_=Double())),
        )
        .returning(lease.acquired_at, lease.expires_at)
    )


def _bound(table: Any, *names: str) -> dict[str, Any]:
    """A parameter per column ``names`` of ``table``, named and typed as it."""
    return {name: bindparam(name, type_=table.c[name].type) for name in names}


@cache
def move_cursor() -> Update:
    """The round-robin cursor of pool ``pool_key`` moves to ``cursor``."""
    return (
        update(pool_table)
        .where(pool.id == bindparam("pool_key", type_=pool.id.type))
        .values(round_robin_cursor=bindparam("cursor", type_=pool.id.type))
    )


# -- create_lease (PostgreSQL; SQLite: claim_proxy, insert_lease) --------------------


@_prepared
def pg_lease_proxy() -> Select[Any]:
    """create_lease: claim a slot of the proxy ``proxy_id``, waiting for its lock.

    Parameters: proxy_id, lease_id, consumer_id, seconds. Adds ``pool_name`` and
    ``proxy_known`` (false when no such proxy is stored).
    """
    picked = (
        locked(
            select(proxy.id).where(
                proxy.id == bindparam("proxy_id"),
                proxy.status == ACTIVE,
                has_free_slot(),
                not_cooling(),
            ),
            skip_locked=False,
        )
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    claimed, statement = _claim(picked, advance_cursor=False)
    return statement.add_columns(
        select(pool.name)
        .where(pool.id == claimed.c.pool_id)
        .scalar_subquery()
        .label("pool_name"),
        exists().where(proxy.id == bindparam("proxy_id")).label("proxy_known"),
    )
