"""Every statement of the SQL adapter, in one place, each clause explained.

PostgreSQL leases and releases in one statement each (data-modifying CTEs, rows
claimed with ``FOR NO KEY UPDATE SKIP LOCKED``). SQLite has neither, so its steps
run one after another inside one ``BEGIN IMMEDIATE`` transaction. Both share the
filter, eligibility and selector clauses, so they pick the same proxies. Time is
the database's: ``DbNow()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from functools import cache, lru_cache
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError
from sqlalchemy import (
    ColumnElement,
    Double,
    Insert,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.functions import FunctionElement

from ..exceptions import InvalidArgumentError
from ..models import EARTH_RADIUS_KM, ProxyFilters, SelectorStrategy
from .sql_schema import (
    UtcDateTime,
    consumer_table,
    domain_cooldown_table,
    lease_history_table,
    lease_table,
    pool_table,
    proxy_table,
)

proxy, pool, lease = proxy_table.c, pool_table.c, lease_table.c
domain_cooldown = domain_cooldown_table.c

# A literal, not a parameter, so the planner can use the partial indexes on it.
ACTIVE: ColumnClause[Any] = literal_column("'active'")
BANNED: ColumnClause[Any] = literal_column("'banned'")

# The ProxyFilters fields that are not one column compared for equality.
_STRUCTURED_FILTER_FIELDS = frozenset(
    {"latitude", "longitude", "radius_km", "all_of", "any_of", "none_of"}
)
_SAME_POINT_DEGREES = 1e-6  # ProxyFilters.matches: math.isclose(abs_tol=1e-6)

# The SQLite expression of 'now' as whole microseconds (SQLite keeps milliseconds).
_SQLITE_NOW_US = (
    "(CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"
)


S = TypeVar("S")

# psycopg caches the parsing of queries up to this length only
# (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH).
PSYCOPG_CACHED_QUERY_BYTES = 4096

# The dialect PostgreSQL statements are compiled for, once.
_PSYCOPG = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


class Prepared:
    """A PostgreSQL statement compiled once, run as driver SQL.

    SQLAlchemy computes a cache key on every execution of a statement object,
    and for the acquire CTE that costs more than the round trip; compiled SQL
    skips it. The statements bind only types psycopg adapts itself (str, int,
    float, UUID), and rows come back as psycopg builds them. Keep each under
    ``PSYCOPG_CACHED_QUERY_BYTES``: psycopg parses a longer query again on every
    run, which costs about as much as the round trip.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self._compiled = statement.compile(dialect=_PSYCOPG)
        if self._compiled._bind_processors:
            raise TypeError("a prepared statement must bind only native types")
        self.sql = self._compiled.string
        # The values bound in when it was built (literals); the rest come per run.
        self._literals = {
            name: value
            for name, value in self._compiled.construct_params(_check=False).items()
            if value is not None
        }

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The statement's parameters: ``values`` and its bound literals."""
        return {**values, **self._literals}


def _prepared(build: Callable[[], Select[Any]]) -> Callable[[], Prepared]:
    """A PostgreSQL statement builder, built and compiled once."""
    return cache(lambda: Prepared(build()))


def _cached_per_filters(
    build: Callable[[SelectorStrategy, ProxyFilters | None, bool], S],
) -> Callable[[SelectorStrategy, ProxyFilters | None, bool], S]:
    """Build a statement once per selector, filters (their values are bound in)
    and whether it checks a target domain (the ``target_domain`` parameter).

    Building a CTE costs milliseconds; reusing it does not.
    """

    @lru_cache(maxsize=256)
    def cached(
        strategy: SelectorStrategy, filters_json: str | None, by_domain: bool
    ) -> S:
        filters = None
        if filters_json is not None:
            filters = ProxyFilters.model_validate_json(filters_json)
        return build(strategy, filters, by_domain)

    def statement(
        strategy: SelectorStrategy, filters: ProxyFilters | None, by_domain: bool
    ) -> S:
        filters_json = None if filters is None else _filters_key(filters)
        return cached(strategy, filters_json, by_domain)

    return statement


def _filters_key(filters: ProxyFilters) -> str:
    try:
        return filters.model_dump_json()
    except PydanticSerializationError as exc:  # a str no encoding can hold
        raise InvalidArgumentError(f"filters cannot be sent to SQL: {exc}") from None


# -- time and distance, compiled per dialect --------------------------------------


class DbNow(FunctionElement[datetime]):
    """The database's clock: the time every expiry is computed and compared with."""

    type = UtcDateTime()
    inherit_cache = True


class DbNowPlus(FunctionElement[datetime]):
    """The database's clock plus a number of seconds (a float)."""

    type = UtcDateTime()
    inherit_cache = True


class HaversineKm(FunctionElement[float]):
    """Great-circle distance in km, the same arithmetic as ``models.haversine_km``."""

    type = Double()
    inherit_cache = True


@compiles(DbNow, "postgresql")
def _now_postgresql(element: DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    # The start of the statement's transaction: one instant for the whole CTE.
    return "now()"


@compiles(DbNow, "sqlite")
def _now_sqlite(element: DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite fixes 'now' for the duration of one statement.
    return _SQLITE_NOW_US


@compiles(DbNowPlus, "postgresql")
def _now_plus_postgresql(element: DbNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(now() + make_interval(secs => {seconds}))"


@compiles(DbNowPlus, "sqlite")
def _now_plus_sqlite(element: DbNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"({_SQLITE_NOW_US} + CAST(ROUND({seconds} * 1000000.0) AS INTEGER))"


@compiles(HaversineKm, "postgresql")
def _haversine_postgresql(
    element: HaversineKm, compiler: SQLCompiler, **kw: Any
) -> str:
    # The operations of models.haversine_km in its order, so the libm both call
    # gives the same doubles; the diameter is 2 * EARTH_RADIUS_KM as one float.
    lat1, lon1, lat2, lon2 = (compiler.process(arg, **kw) for arg in element.clauses)
    half_dphi = f"sin((radians({lat2}) - radians({lat1})) / 2)"
    half_dlambda = f"sin(radians({lon2} - {lon1}) / 2)"
    a = (
        f"power({half_dphi}, 2)"
        f" + cos(radians({lat1})) * cos(radians({lat2})) * power({half_dlambda}, 2)"
    )
    diameter = f"CAST('{2 * EARTH_RADIUS_KM!r}' AS float8)"
    return f"({diameter} * asin(least(1.0, sqrt({a}))))"


@compiles(HaversineKm, "sqlite")
def _haversine_sqlite(element: HaversineKm, compiler: SQLCompiler, **kw: Any) -> str:
    # The adapter registers models.haversine_km under this name on each connection.
    return f"pharox_haversine_km({compiler.process(element.clauses, **kw)})"


# -- which proxies may be leased, and in what order --------------------------------


def filter_clause(filters: ProxyFilters) -> ColumnElement[bool]:
    """``filters`` as a condition that is never NULL, true exactly where
    ``filters.matches(proxy)`` is, so NOT (for none_of) keeps unknown values."""
    conditions: list[ColumnElement[bool]] = []
    for name in type(filters).model_fields:
        wanted = getattr(filters, name)
        if name in _STRUCTURED_FILTER_FIELDS or wanted is None:
            continue
        value = wanted.value if isinstance(wanted, Enum) else wanted
        # IS NOT DISTINCT FROM (SQLite: IS): false, not NULL, for a NULL column.
        conditions.append(proxy[name].is_not_distinct_from(value))
    if filters.latitude is not None and filters.longitude is not None:
        if filters.radius_km is None:
            near = and_(
                func.abs(proxy.latitude - filters.latitude) <= _SAME_POINT_DEGREES,
                func.abs(proxy.longitude - filters.longitude) <= _SAME_POINT_DEGREES,
            )
        else:
            near = (
                HaversineKm(
                    literal(filters.latitude, Double()),
                    literal(filters.longitude, Double()),
                    proxy.latitude,
                    proxy.longitude,
                )
                <= filters.radius_km
            )
        # A proxy without coordinates makes the comparison NULL: not near.
        conditions.append(func.coalesce(near, false()))
    for child in filters.all_of or ():
        conditions.append(filter_clause(child))
    if filters.any_of:
        conditions.append(or_(*(filter_clause(child) for child in filters.any_of)))
    if filters.none_of:
        conditions.append(
            not_(or_(*(filter_clause(child) for child in filters.none_of)))
        )
    return and_(true(), *conditions)


def pool_id_named() -> Any:
    """The id of the pool named by the ``pool_name`` parameter, as a scalar."""
    return select(pool.id).where(pool.name == bindparam("pool_name")).scalar_subquery()


def eligible(
    pool_id: Any, filters: ProxyFilters | None, cooldowns: Any = None
) -> ColumnElement[bool]:
    """ACTIVE proxies of the pool with a free slot, not cooling down, that match
    the filters, and not among the ``cooldowns`` CTE (``domain_cooldowns_now``)."""
    return and_(
        proxy.pool_id == pool_id,
        proxy.status == ACTIVE,
        has_free_slot(),
        not_cooling(),
        proxy.id.not_in(select(cooldowns.c.proxy_id))
        if cooldowns is not None
        else true(),
        filter_clause(filters) if filters is not None else true(),
    )


def not_cooling() -> ColumnElement[bool]:
    """Never cooled down, or the cooldown is over (a filter on the row, not an
    index column: setting a cooldown stays a HOT update)."""
    # IS NOT TRUE: also true for NULL, never cooled.
    return (proxy.cooldown_until > DbNow()).is_not(true())


def domain_parameter() -> Any:
    """The ``target_domain`` parameter, NULL for none (a name no column has:
    SQLAlchemy would take a column's name for a SET of an UPDATE)."""
    return bindparam("target_domain", type_=String())


def domain_cooldowns_now() -> Any:
    """A CTE of the proxies cooling down for the ``target_domain`` now: one range
    of the (domain, cooldown_until) index, which PostgreSQL hashes once for the
    whole search instead of probing per proxy."""
    return (
        select(domain_cooldown.proxy_id)
        .where(
            domain_cooldown.domain == domain_parameter(),
            domain_cooldown.cooldown_until > DbNow(),
        )
        .cte("cooldowns")
    )


def selector_order(strategy: SelectorStrategy, cursor: Any) -> list[Any]:
    """The ORDER BY of a selector (IStorage documents the orders)."""
    if strategy is SelectorStrategy.LEAST_USED:
        return [proxy.current_leases, proxy.checked_at, proxy.id]
    if strategy is SelectorStrategy.ROUND_ROBIN:
        # Ids after the cursor first, then wrap around to the smallest id.
        return [case((proxy.id > cursor, 0), else_=1), proxy.id]
    return [proxy.checked_at.desc(), proxy.id]


@_cached_per_filters
def find_proxy(
    strategy: SelectorStrategy, filters: ProxyFilters | None, by_domain: bool
) -> Select[Any]:
    """The proxy the selector picks now, without leasing it."""
    cursor = select(pool.round_robin_cursor).where(pool.name == bindparam("pool_name"))
    cooldowns = domain_cooldowns_now() if by_domain else None
    return (
        select(proxy_table)
        .where(eligible(pool_id_named(), filters, cooldowns))
        .order_by(*selector_order(strategy, cursor.scalar_subquery()))
        .limit(1)
    )


@cache
def expired_lease_exists() -> ColumnElement[bool]:
    """Whether any active lease is past its expiry (one probe of the expiry index)."""
    return exists().where(lease.expires_at <= DbNow())


def has_free_slot() -> ColumnElement[bool]:
    """Another lease fits under max_concurrency (none means unlimited)."""
    return or_(
        proxy.max_concurrency.is_(None),
        proxy.current_leases < proxy.max_concurrency,
    )


# -- PostgreSQL: one statement per acquire, lease, release and reclaim -------------


def _locked(query: Select[Any], *, skip_locked: bool) -> Select[Any]:
    # FOR NO KEY UPDATE: the row lock an UPDATE of non-key columns takes; it lets
    # foreign-key checks through.
    return query.with_for_update(
        key_share=True, skip_locked=skip_locked, of=proxy_table
    )


@_cached_per_filters
def pg_acquire(
    strategy: SelectorStrategy, filters: ProxyFilters | None, by_domain: bool
) -> Prepared:
    """``pg_acquire_statement``, compiled."""
    return Prepared(pg_acquire_statement(strategy, filters, by_domain))


def pg_acquire_statement(
    strategy: SelectorStrategy, filters: ProxyFilters | None, by_domain: bool = False
) -> Select[Any]:
    """Claim a slot, insert the lease, return the proxy row and the lease times.

    Parameters: pool_name, lease_id, consumer_id, seconds, and target_domain
    when ``by_domain``. Always one row. When
    it claimed nothing, ``reclaim_needed`` says an expired lease exists (the
    claim never runs past one, so reclaiming always comes before the search) and
    ``contended`` says a free proxy existed that other transactions held locked,
    so another try may get it.
    """
    cooldowns = domain_cooldowns_now() if by_domain else None
    if strategy is SelectorStrategy.ROUND_ROBIN:
        # The pool row, locked: round-robin acquires of one pool take turns, and
        # each reads the cursor the one before it left.
        locked_pool = (
            select(pool.id, pool.round_robin_cursor)
            .where(pool.name == bindparam("pool_name"))
            .with_for_update(key_share=True)
            .cte("locked_pool")
            .prefix_with("MATERIALIZED")
        )
        pool_id: Any = select(locked_pool.c.id).scalar_subquery()
        cursor = select(locked_pool.c.round_robin_cursor).scalar_subquery()
        free = and_(eligible(pool_id, filters, cooldowns), not_(expired_lease_exists()))
        # The first free proxy after the cursor in id order (an index walk) ...
        after_cursor = (
            _locked(
                select(proxy.id).where(free, proxy.id > cursor).order_by(proxy.id),
                skip_locked=True,
            )
            .limit(1)
            .cte("after_cursor")
            .prefix_with("MATERIALIZED")
        )
        # ... or, only when there is none, the first from the start: wrap around.
        from_start = (
            _locked(
                select(proxy.id)
                .where(free, not_(exists(select(after_cursor.c.id))))
                .order_by(proxy.id),
                skip_locked=True,
            )
            .limit(1)
            .cte("from_start")
            .prefix_with("MATERIALIZED")
        )
        picked: Any = union_all(select(after_cursor.c.id), select(from_start.c.id)).cte(
            "picked"
        )
    else:
        pool_id = pool_id_named()
        # The first free proxy in selector order; rows that other transactions
        # hold locked are skipped, not waited for. Nothing is picked while an
        # expired lease waits to be reclaimed.
        picked = (
            _locked(
                select(proxy.id)
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
    claimed, statement = _claim(
        picked, advance_cursor=strategy is SelectorStrategy.ROUND_ROBIN
    )
    nothing_claimed = claimed.c.id.is_(None)
    # Both flags are evaluated only when nothing was claimed.
    return statement.add_columns(
        case((nothing_claimed, expired_lease_exists()), else_=false()).label(
            "reclaim_needed"
        ),
        case(
            (nothing_claimed, exists().where(eligible(pool_id, filters, cooldowns))),
            else_=false(),
        ).label("contended"),
    )


@_prepared
def pg_lease_proxy() -> Select[Any]:
    """create_lease: claim a slot of the proxy ``proxy_id``, waiting for its lock.

    Parameters: proxy_id, lease_id, consumer_id, seconds. Adds ``pool_name`` and
    ``proxy_known`` (false when no such proxy is stored).
    """
    picked = (
        _locked(
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


def _claim(picked: Any, *, advance_cursor: bool) -> tuple[Any, Select[Any]]:
    """Lease the proxy ``picked`` names; the claim CTE and the one-row result."""
    # One more slot of the picked proxy is taken; its new row comes back.
    claimed = (
        update(proxy_table)
        .where(proxy.id == picked.c.id)
        .values(current_leases=proxy.current_leases + 1)
        .returning(*proxy_table.c)
        .cte("claimed")
    )
    # The lease row, timed by the database clock.
    leased = (
        insert(lease_table)
        .from_select(
            ["id", "proxy_id", "pool_id", "consumer_id", "acquired_at", "expires_at"],
            select(
                bindparam("lease_id", type_=lease.id.type),
                claimed.c.id,
                claimed.c.pool_id,
                bindparam("consumer_id", type_=lease.consumer_id.type),
                DbNow(),
                DbNowPlus(bindparam("seconds", type_=Double())),
            ).select_from(claimed),
        )
        .returning(lease.acquired_at, lease.expires_at)
        .cte("leased")
    )
    # One row even when nothing was claimed, to carry the caller's flags. The
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


@_prepared
def pg_release() -> Select[Any]:
    """Release the lease ``lease_id`` if it is still active; whether it was.

    A lease leaves the active table when it is released or reclaimed, so a
    second or late release matches no row and changes nothing.
    """
    gone = (
        delete(lease_table)
        .where(lease.id == bindparam("lease_id"))
        .returning(*lease_table.c)
        .cte("gone")
    )
    # Its slot is given back ...
    freed = (
        update(proxy_table)
        .where(proxy.id == gone.c.proxy_id)
        .values(current_leases=proxy.current_leases - 1)
        .returning(proxy.id)
        .cte("freed")
    )
    # ... and it is kept in the history.
    logged = logged_leases(gone, "released")
    return select(exists(select(gone.c.id)).label("released")).add_cte(freed, logged)


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
    locked = (
        _locked(
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
        .where(proxy.id == per_proxy.c.proxy_id, proxy.id.in_(select(locked.c.id)))
        .values(current_leases=proxy.current_leases - per_proxy.c.expired)
        .returning(proxy.id)
        .cte("freed")
    )
    logged = logged_leases(gone, "expired")
    return select(func.count()).select_from(gone).add_cte(freed, logged)


def logged_leases(gone: Any, outcome: str) -> Any:
    """The history rows of the leases ``gone`` returned (a CTE)."""
    return (
        insert(lease_history_table)
        .from_select(
            [*_LEASE_COLUMNS, "released_at", "outcome"],
            select(
                *(gone.c[name] for name in _LEASE_COLUMNS),
                DbNow(),
                literal(outcome),
            ),
        )
        .returning(lease_history_table.c.id)
        .cte(f"logged_{outcome}")
    )


_LEASE_COLUMNS = [column.name for column in lease_table.c]


@cache
def lease_with_proxy() -> Select[Any]:
    """The active lease ``lease_id`` with its proxy row, shaped like an acquire."""
    return (
        select(*proxy_table.c, lease.acquired_at, lease.expires_at)
        .join_from(lease_table, proxy_table, lease.proxy_id == proxy.id)
        .where(lease.id == bindparam("lease_id"))
    )


# -- SQLite: the same steps, one after another in one immediate transaction --------


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
            acquired_at=DbNow(),
            expires_at=DbNowPlus(bindparam("seconds", type_=Double())),
        )
        .returning(lease.acquired_at, lease.expires_at)
    )


@cache
def move_cursor() -> Update:
    """The round-robin cursor of pool ``pool_key`` moves to ``cursor``."""
    return (
        update(pool_table)
        .where(pool.id == bindparam("pool_key", type_=pool.id.type))
        .values(round_robin_cursor=bindparam("cursor", type_=pool.id.type))
    )


@cache
def remove_lease() -> ReturningDelete[Any]:
    """The active lease ``lease_id`` leaves the active table, returned."""
    return (
        delete(lease_table)
        .where(lease.id == bindparam("lease_id"))
        .returning(*lease_table.c)
    )


@cache
def remove_expired_leases() -> ReturningDelete[Any]:
    """Every expired lease leaves the active table, returned."""
    return (
        delete(lease_table).where(lease.expires_at <= DbNow()).returning(*lease_table.c)
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
    return insert(lease_history_table).values(released_at=DbNow(), outcome=outcome)


# -- administration and reads ------------------------------------------------------


def _dialect_insert(dialect_name: str, table: Any) -> Any:
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@cache
def insert_ignoring_conflicts(dialect_name: str, table: Any) -> Any:
    """INSERT that does nothing when a unique key (id, name, endpoint) exists."""
    return _dialect_insert(dialect_name, table).on_conflict_do_nothing()


@cache
def upsert_consumer(dialect_name: str) -> Any:
    """The consumer ``name`` (parameters: id, name), inserted unless there; its id.

    DO UPDATE rather than DO NOTHING so the row comes back when it exists, even
    when another transaction inserted it a moment ago.
    """
    upsert = _dialect_insert(dialect_name, consumer_table)
    return upsert.on_conflict_do_update(
        index_elements=[consumer_table.c.name],
        set_={"name": upsert.excluded.name},
    ).returning(consumer_table.c.id)


@cache
def same_proxy() -> Select[Any]:
    """The stored proxy ``proxy_id``, or else the same endpoint in ``pool_key``."""
    same_id = proxy.id == bindparam("proxy_id", type_=proxy.id.type)
    same_endpoint = and_(
        proxy.pool_id == bindparam("pool_key", type_=proxy.pool_id.type),
        proxy.protocol == bindparam("protocol"),
        proxy.host_key == bindparam("host_key"),
        proxy.port == bindparam("port"),
        func.coalesce(proxy.username, "") == bindparam("username_key"),
    )
    return (
        select(proxy_table)
        .where(or_(same_id, same_endpoint))
        .order_by(case((same_id, 0), else_=1))
        .limit(1)
    )


@cache
def proxy_exists() -> Select[Any]:
    """Whether the proxy ``proxy_id`` is stored."""
    return select(
        exists().where(proxy.id == bindparam("proxy_id", type_=proxy.id.type))
    )


@cache
def pool_named() -> Select[Any]:
    """The pool ``pool_name``."""
    return select(pool_table).where(pool.name == bindparam("pool_name"))


@cache
def pool_exists() -> Select[Any]:
    """Whether the pool with id ``pool_key`` exists."""
    return select(exists().where(pool.id == bindparam("pool_key", type_=pool.id.type)))


@cache
def all_pools() -> Select[Any]:
    """Every pool, by name."""
    return select(pool_table).order_by(pool.name)


@cache
def proxies_of_pool() -> Select[Any]:
    """The proxies of pool ``pool_name``, in FIRST_AVAILABLE order."""
    return (
        select(proxy_table)
        .where(proxy.pool_id == pool_id_named())
        .order_by(*selector_order(SelectorStrategy.FIRST_AVAILABLE, None))
    )


@cache
def pool_stats() -> Select[Any]:
    """The counts of pool ``pool_name``; no row for an unknown pool."""
    active = proxy.status == ACTIVE
    return (
        select(
            func.count(proxy.id).label("total_proxies"),
            func.count(proxy.id).filter(active).label("active_proxies"),
            func.count(proxy.id)
            .filter(and_(active, has_free_slot(), not_cooling()))
            .label("available_proxies"),
            func.count(proxy.id)
            .filter(and_(active, proxy.cooldown_until > DbNow()))
            .label("cooling_proxies"),
            func.count(proxy.id).filter(proxy.status == BANNED).label("banned_proxies"),
            func.count(proxy.id)
            .filter(proxy.current_leases > 0)
            .label("leased_proxies"),
            func.coalesce(func.sum(proxy.current_leases), 0).label("total_leases"),
        )
        .select_from(pool_table.outerjoin(proxy_table, proxy.pool_id == pool.id))
        .where(pool.name == bindparam("pool_name"))
        .group_by(pool.id)
    )
