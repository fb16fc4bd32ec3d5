"""The clauses every SQL statement shares: time, distance, eligibility, order.

PostgreSQL and SQLite compile the same clauses, so both pick the same proxies.
Time is the database's: ``DbNow()``. Statements are built once and cached
(``sql_query.Prepared`` compiles PostgreSQL's hot ones).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from functools import cache, lru_cache
from typing import Any, TypeVar

from pydantic_core import PydanticSerializationError
from sqlalchemy import (
    ColumnElement,
    Double,
    String,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnClause
from sqlalchemy.sql.functions import FunctionElement

from ..exceptions import InvalidArgumentError
from ..models import EARTH_RADIUS_KM, ProxyFilters, SelectorStrategy
from .sql_query import Prepared
from .sql_schema import (
    UtcDateTime,
    domain_cooldown_table,
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


def _prepared(build: Callable[[], ClauseElement]) -> Callable[[], Prepared]:
    """A PostgreSQL statement builder, built and compiled once."""
    return cache(lambda: Prepared(build()))


#: What an acquire checks of its target domain (the ``target_domain``
#: parameter): nothing, the rests there, or also the reuse delay (the
#: ``reuse_delay`` parameter). A bool works as the first two.
NO_DOMAIN, BY_DOMAIN, PACED = 0, 1, 2


def domain_check(domain: str | None, reuse_delay: float) -> int:
    """The domain check of an acquire for ``domain`` with ``reuse_delay``."""
    if domain is None:
        return NO_DOMAIN
    return PACED if reuse_delay else BY_DOMAIN


def _cached_per_filters(
    build: Callable[[SelectorStrategy, ProxyFilters | None, int], S],
) -> Callable[[SelectorStrategy, ProxyFilters | None, int], S]:
    """Build a statement once per selector, filters (their values are bound in)
    and domain check (``NO_DOMAIN``, ``BY_DOMAIN``, ``PACED``).

    Building a CTE costs milliseconds; reusing it does not.
    """

    @lru_cache(maxsize=256)
    def cached(strategy: SelectorStrategy, filters_json: str | None, check: int) -> S:
        filters = None
        if filters_json is not None:
            filters = ProxyFilters.model_validate_json(filters_json)
        return build(strategy, filters, check)

    def statement(
        strategy: SelectorStrategy, filters: ProxyFilters | None, check: int
    ) -> S:
        filters_json = None if filters is None else _filters_key(filters)
        return cached(strategy, filters_json, int(check))

    return statement


def _filters_key(filters: ProxyFilters) -> str:
    try:
        return filters.model_dump_json()
    except PydanticSerializationError as exc:  # a str no encoding can hold
        raise InvalidArgumentError(f"filters cannot be sent to SQL: {exc}") from None


class DbNow(FunctionElement[datetime]):
    """The database's clock: the time every expiry is computed and compared with."""

    type = UtcDateTime()
    inherit_cache = True


class DbNowPlus(FunctionElement[datetime]):
    """The database's clock plus a number of seconds (a float)."""

    type = UtcDateTime()
    inherit_cache = True


class SecondsUntil(FunctionElement[float]):
    """The seconds from the database's now to a time (negative: past)."""

    type = Double()
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


@compiles(SecondsUntil, "postgresql")
def _seconds_until_postgresql(
    element: SecondsUntil, compiler: SQLCompiler, **kw: Any
) -> str:
    return f"EXTRACT(EPOCH FROM ({compiler.process(element.clauses, **kw)} - now()))"


@compiles(SecondsUntil, "sqlite")
def _seconds_until_sqlite(
    element: SecondsUntil, compiler: SQLCompiler, **kw: Any
) -> str:
    moment = compiler.process(element.clauses, **kw)
    return f"(({moment} - {_SQLITE_NOW_US}) / 1000000.0)"


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


def reuse_delay_parameter() -> Any:
    """The ``reuse_delay`` parameter, in seconds (cast: a prepared statement
    cannot infer the type of ``-$n``)."""
    return cast(bindparam("reuse_delay"), Double())


def domain_cooldowns_now(check: int = BY_DOMAIN) -> Any:
    """A CTE of the proxies held back from the ``target_domain`` now: resting
    there, and with ``PACED`` also leased for it within ``reuse_delay``. One
    range of the (domain, cooldown_until) index, which PostgreSQL hashes once for
    the whole search instead of probing per proxy."""
    held_back: Any = domain_cooldown.cooldown_until > DbNow()
    if check == PACED:
        held_back = or_(held_back, in_reuse_delay())
    return (
        select(domain_cooldown.proxy_id)
        .where(domain_cooldown.domain == domain_parameter(), held_back)
        .cte("cooldowns")
    )


def upsert_domain_row(
    dialect_name: str,
    proxy_id: Any,
    first: dict[str, Any],
    again: dict[str, Any],
    *,
    source: Any = None,
    where: Any = None,
) -> Any:
    """The (proxy ``proxy_id``, ``target_domain``) row of
    ``pharox_domain_cooldown``: created with ``first`` (column: value), or,
    where it exists (and ``where`` holds), updated with ``again``. ``source``:
    where ``proxy_id`` comes from (a CTE that may hold no row)."""
    dialect_insert = (
        postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    )
    new_row = select(proxy_id, domain_parameter(), *first.values())
    if source is not None:
        new_row = new_row.select_from(source)
    # WHERE true keeps SQLite from reading ON CONFLICT as a join constraint.
    return (
        dialect_insert(domain_cooldown_table)
        .from_select(["proxy_id", "domain", *first], new_row.where(true()))
        .on_conflict_do_update(
            index_elements=[domain_cooldown.proxy_id, domain_cooldown.domain],
            set_=again,
            where=where,
        )
    )


def in_reuse_delay() -> ColumnElement[bool]:
    """The (proxy, domain) row was leased less than ``reuse_delay`` ago."""
    return domain_cooldown.leased_at > DbNowPlus(-reuse_delay_parameter())


def paced_in(pool_id: Any, filters: ProxyFilters | None) -> Any:
    """The seconds until the first proxy that only its reuse delay for the
    ``target_domain`` holds back comes out of it; NULL when there is none."""
    ends = func.min(domain_cooldown.leased_at)
    return (
        select(SecondsUntil(ends) + reuse_delay_parameter())
        .select_from(domain_cooldown_table)
        .join(proxy_table, proxy.id == domain_cooldown.proxy_id)
        .where(
            domain_cooldown.domain == domain_parameter(),
            in_reuse_delay(),
            (domain_cooldown.cooldown_until > DbNow()).is_not(true()),
            eligible(pool_id, filters),
        )
        .scalar_subquery()
    )


def selector_order(strategy: SelectorStrategy, cursor: Any) -> list[Any]:
    """The ORDER BY of a selector (IStorage documents the orders)."""
    if strategy is SelectorStrategy.LEAST_USED:
        return [proxy.current_leases, proxy.checked_at, proxy.id]
    if strategy is SelectorStrategy.ROUND_ROBIN:
        # Ids after the cursor first, then wrap around to the smallest id.
        return [case((proxy.id > cursor, 0), else_=1), proxy.id]
    return [proxy.checked_at.desc(), proxy.id]


def has_free_slot() -> ColumnElement[bool]:
    """Another lease fits under max_concurrency (none means unlimited)."""
    return or_(
        proxy.max_concurrency.is_(None),
        proxy.current_leases < proxy.max_concurrency,
    )


@cache
def expired_lease_exists() -> ColumnElement[bool]:
    """Whether any active lease is past its expiry: the first expired one in
    expiry order, a range of the expiry index that ends at the first lease not
    yet expired, dead or alive. Written as EXISTS, PostgreSQL's generic plan
    scans the whole table for a first match; as the earliest expiry (min), the
    index walk passes every dead entry a released lease left, until a vacuum."""
    # A one-letter alias and a literal LIMIT: short, as a statement must be to
    # stay within PSYCOPG_CACHED_QUERY_BYTES (a paced acquire holds this twice,
    # in its search and in its flags).
    expired = lease_table.alias("e").c.expires_at
    first_expired = (
        select(literal_column("1"))
        .where(expired <= DbNow())
        .order_by(expired)
        .limit(literal_column("1"))
        .scalar_subquery()
    )
    return first_expired.is_not(None)
