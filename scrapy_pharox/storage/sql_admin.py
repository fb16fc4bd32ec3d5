"""The statements of administration and reads, the same for both dialects
(but for the dialect's INSERT ... ON CONFLICT)."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from ..models import SelectorStrategy
from .sql_clauses import (
    ACTIVE,
    BANNED,
    DbNow,
    has_free_slot,
    not_cooling,
    pool,
    pool_id_named,
    proxy,
    selector_order,
)
from .sql_schema import (
    consumer_table,
    pool_table,
    proxy_table,
)


def dialect_insert(dialect_name: str, table: Any) -> Any:
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@cache
def insert_ignoring_conflicts(dialect_name: str, table: Any) -> Any:
    """INSERT of a row (a parameter per column, named as it) that does nothing
    when a unique key (id, name, endpoint) exists."""
    values = {
        column.name: bindparam(column.name, type_=column.type) for column in table.c
    }
    return dialect_insert(dialect_name, table).values(values).on_conflict_do_nothing()


@cache
def upsert_consumer(dialect_name: str) -> Any:
    """The consumer ``name`` (parameters: id, name), inserted unless there; its id.

    DO UPDATE rather than DO NOTHING so the row comes back when it exists, even
    when another transaction inserted it a moment ago.
    """
    upsert = dialect_insert(dialect_name, consumer_table).values(
        id=bindparam("id", type_=consumer_table.c.id.type), name=bindparam("name")
    )
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
        func.coalesce(proxy.identity, proxy.username, "") == bindparam("who_key"),
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
