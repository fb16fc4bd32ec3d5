"""The SQL of what leases report: outcomes recorded at release, cooldowns, status.

PostgreSQL records an outcome in the one statement that ends the lease, so a
release stays one round trip and records nothing when the lease was no longer
active; SQLite runs the same clauses one after another in the release's
transaction. A cooldown lasts ``CooldownPolicy.seconds`` of the strikes the
database itself just counted, and starts at the database's now.

The outcome parameters: ``latency`` (may be NULL), ``target_domain``, and the
policy: ``base_seconds``, ``max_seconds``, ``jitter``, ``draw``,
``failures_before_cooldown``, ``rest_seconds`` (a throttled outcome's rest).
Kept apart from ``sql_leasing`` for size only: the same conventions hold.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Delete,
    Double,
    Integer,
    Select,
    String,
    bindparam,
    case,
    cast,
    delete,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.functions import FunctionElement

from ..models import LATENCY_SMOOTHING, LeaseOutcome, SelectorStrategy
from .sql_clauses import (
    DbNow,
    DbNowPlus,
    domain_parameter,
    pool_id_named,
    selector_order,
    upsert_domain_row,
)
from .sql_query import Prepared
from .sql_release import freed_slot, logged_release, removed_lease
from .sql_schema import domain_cooldown_table, lease_table, proxy_table

proxy, lease = proxy_table.c, lease_table.c
domain_cooldown = domain_cooldown_table.c


class CooldownSeconds(FunctionElement[float]):
    """``CooldownPolicy.seconds(strikes, draw)``; arguments: strikes, base_seconds,
    max_seconds, jitter, draw."""

    type = Double()
    inherit_cache = True


@compiles(CooldownSeconds, "postgresql")
def _cooldown_postgresql(
    element: CooldownSeconds, compiler: SQLCompiler, **kw: Any
) -> str:
    # CooldownPolicy.seconds operation for operation, so both give the same double.
    strikes, base, longest, jitter, draw = (
        compiler.process(arg, **kw) for arg in element.clauses
    )
    exponent = f"least(greatest({strikes}, 1) - 1, 62)"
    plain = f"least({longest}, {base} * power(CAST(2 AS float8), {exponent}))"
    return f"({plain} * (1 + {jitter} * (2 * {draw} - 1)))"


@compiles(CooldownSeconds, "sqlite")
def _cooldown_sqlite(element: CooldownSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite may lack power(); the adapter registers CooldownPolicy.seconds
    # under this name on each connection.
    return f"pharox_cooldown_seconds({compiler.process(element.clauses, **kw)})"


def _number(name: str) -> Any:
    # Cast: PostgreSQL cannot infer the type of a parameter that is NULL.
    return cast(bindparam(name), Double())


def cooldown_seconds(strikes: Any) -> CooldownSeconds:
    """The cooldown after ``strikes`` under the policy in the parameters."""
    return CooldownSeconds(
        strikes,
        _number("base_seconds"),
        _number("max_seconds"),
        _number("jitter"),
        _number("draw"),
    )


def outcome_values(outcome: LeaseOutcome, by_domain: bool) -> dict[str, Any]:
    """The proxy's health after ``outcome`` (``by_domain``: reported with a
    domain): the SET of an UPDATE of its row, every expression reading the row
    as it was (IStorage.release_lease)."""
    latency = _number("latency")
    values: dict[str, Any] = {
        # A moving average, the first latency as it is.
        "latency_ms": case(
            (latency.is_(None), proxy.latency_ms),
            (proxy.latency_ms.is_(None), latency),
            else_=literal(1 - LATENCY_SMOOTHING, Double()) * proxy.latency_ms
            + literal(LATENCY_SMOOTHING, Double()) * latency,
        ),
    }
    if outcome is LeaseOutcome.SUCCESS:
        values.update(
            successes=proxy.successes + 1, consecutive_bans=0, consecutive_failures=0
        )
    elif outcome is LeaseOutcome.THROTTLED:
        if not by_domain:  # with a domain, the rest is that domain's only
            values["cooldown_until"] = longer_rest(proxy.cooldown_until)
    elif outcome is LeaseOutcome.BAN:
        values["bans"] = proxy.bans + 1
        if not by_domain:  # a ban with a domain strikes that domain only
            bans_in_a_row = proxy.consecutive_bans + 1
            values["consecutive_bans"] = bans_in_a_row
            values["cooldown_until"] = DbNowPlus(cooldown_seconds(bans_in_a_row))
    else:
        failures_in_a_row = proxy.consecutive_failures + 1
        # CooldownPolicy.strikes of a failure; no cooldown below one.
        strikes = (
            failures_in_a_row
            - bindparam("failures_before_cooldown", type_=Integer())
            + literal_column("1")
        )
        values.update(
            failures=proxy.failures + 1,
            consecutive_failures=failures_in_a_row,
            cooldown_until=case(
                (strikes >= 1, DbNowPlus(cooldown_seconds(strikes))),
                else_=proxy.cooldown_until,
            ),
        )
    return values


def domain_ban(dialect_name: str, proxy_id: Any) -> Any:
    """A ban with a domain: one more strike of the (proxy ``proxy_id``,
    ``target_domain``) pair and its cooldown, the row created on the first."""
    first: Any = literal_column("1")
    again = domain_cooldown.consecutive_bans + 1
    return upsert_domain_row(
        dialect_name,
        proxy_id,
        {
            "consecutive_bans": first,
            "cooldown_until": DbNowPlus(cooldown_seconds(first)),
        },
        {
            "consecutive_bans": again,
            "cooldown_until": DbNowPlus(cooldown_seconds(again)),
        },
    )


def longer_rest(until: Any) -> Any:
    """``until``, or the end of a rest of ``rest_seconds`` from now when that
    is later (a NULL ``until``: no rest yet)."""
    rest_ends = DbNowPlus(_number("rest_seconds"))
    return case((until > rest_ends, until), else_=rest_ends)


def domain_throttle(dialect_name: str, proxy_id: Any) -> Any:
    """A throttled outcome with a domain: the (proxy ``proxy_id``,
    ``target_domain``) pair rests ``rest_seconds``, its strikes as they were;
    the row created on the first."""
    return upsert_domain_row(
        dialect_name,
        proxy_id,
        {
            "consecutive_bans": literal_column("0"),
            "cooldown_until": DbNowPlus(_number("rest_seconds")),
        },
        {"cooldown_until": longer_rest(domain_cooldown.cooldown_until)},
    )


def domain_success(proxy_id: Any) -> ReturningUpdate[Any]:
    """A success with a domain: the pair's strikes start again (its cooldown, if
    one runs, stays)."""
    return (
        update(domain_cooldown_table)
        .where(
            domain_cooldown.proxy_id == proxy_id,
            domain_cooldown.domain == domain_parameter(),
        )
        .values(consecutive_bans=0)
        .returning(domain_cooldown.proxy_id)
    )


# -- PostgreSQL: the release that records an outcome -------------------------------


@cache
def pg_release_reported(outcome: LeaseOutcome, by_domain: bool) -> Prepared:
    """``pg_release`` that also records ``outcome``, still one statement (a
    row, ``released``, if the lease was still active).

    One statement per outcome, with or without a domain: each stays short
    (``Prepared``) and its generic plan does not hang on the outcome.
    Parameters: lease_id, pool_name and the outcome parameters. Every change
    hangs off ``gone``: a lease no longer active records nothing.
    """
    gone = removed_lease()
    # Its slot is given back and the outcome counted: one update of the row.
    changes = [freed_slot(gone, outcome_values(outcome, by_domain))]
    if by_domain and outcome is LeaseOutcome.BAN:
        changes.append(
            domain_ban("postgresql", gone.c.proxy_id)
            .returning(domain_cooldown.proxy_id)
            .cte("domain_banned")
        )
    elif by_domain and outcome is LeaseOutcome.SUCCESS:
        changes.append(domain_success(gone.c.proxy_id).cte("domain_cleared"))
    elif by_domain and outcome is LeaseOutcome.THROTTLED:
        changes.append(
            domain_throttle("postgresql", gone.c.proxy_id)
            .returning(domain_cooldown.proxy_id)
            .cte("domain_rested")
        )
    return Prepared(logged_release(gone).add_cte(*changes))


# -- SQLite: the same clauses after the lease left, in its transaction -------------


@cache
def record_outcome(outcome: LeaseOutcome, by_domain: bool) -> ReturningUpdate[Any]:
    """``outcome`` counted on proxy ``proxy_key``."""
    return (
        update(proxy_table)
        .where(proxy.id == bindparam("proxy_key", type_=proxy.id.type))
        .values(**outcome_values(outcome, by_domain))
        .returning(proxy.id)
    )


@cache
def sqlite_domain_ban() -> Any:
    """``domain_ban`` of proxy ``proxy_key``."""
    return domain_ban("sqlite", bindparam("proxy_key", type_=proxy.id.type))


@cache
def sqlite_domain_throttle() -> Any:
    """``domain_throttle`` of proxy ``proxy_key``."""
    return domain_throttle("sqlite", bindparam("proxy_key", type_=proxy.id.type))


@cache
def sqlite_domain_success() -> ReturningUpdate[Any]:
    """``domain_success`` of proxy ``proxy_key``."""
    return domain_success(bindparam("proxy_key", type_=proxy.id.type))


# -- status and cooldowns ----------------------------------------------------------


@cache
def set_status(*, latency: bool, checked: bool, reset: bool) -> ReturningUpdate[Any]:
    """Proxy ``proxy_id`` gets status ``new_status``; with ``latency`` the
    ``latency`` parameter as its latency_ms; ``checked`` stamps checked_at;
    ``reset`` ends its cooldown and zeroes its consecutive counters. Its new row
    comes back."""
    values: dict[str, Any] = {"status": bindparam("new_status", type_=String())}
    if latency:
        values["latency_ms"] = bindparam("latency", type_=Double())
    if checked:
        values["checked_at"] = DbNow()
    if reset:
        values.update(cooldown_until=null(), consecutive_bans=0, consecutive_failures=0)
    return (
        update(proxy_table)
        .where(proxy.id == bindparam("proxy_id", type_=proxy.id.type))
        .values(**values)
        .returning(*proxy_table.c)
    )


@cache
def pg_set_status_resetting(*, latency: bool, checked: bool) -> Select[Any]:
    """``set_status(reset=True)`` that also ends the proxy's domain cooldowns,
    in one statement."""
    updated = set_status(latency=latency, checked=checked, reset=True).cte("updated")
    cleared = (
        delete(domain_cooldown_table)
        .where(domain_cooldown.proxy_id.in_(select(updated.c.id)))
        .returning(domain_cooldown.proxy_id)
        .cte("cleared")
    )
    return select(*updated.c).add_cte(cleared)


@cache
def clear_domain_cooldowns() -> Delete:
    """Every domain cooldown of proxy ``proxy_id`` ends, its strikes forgotten."""
    return delete(domain_cooldown_table).where(
        domain_cooldown.proxy_id == bindparam("proxy_id", type_=proxy.id.type)
    )


@cache
def domain_cooldowns_of_pool() -> Select[Any]:
    """The domain cooldowns of pool ``pool_name`` still running, proxies in
    FIRST_AVAILABLE order, then by domain."""
    return (
        select(
            domain_cooldown.proxy_id,
            domain_cooldown.domain,
            domain_cooldown.consecutive_bans,
            domain_cooldown.cooldown_until,
        )
        .join_from(
            domain_cooldown_table, proxy_table, proxy.id == domain_cooldown.proxy_id
        )
        .where(
            proxy.pool_id == pool_id_named(), domain_cooldown.cooldown_until > DbNow()
        )
        .order_by(
            *selector_order(SelectorStrategy.FIRST_AVAILABLE, None),
            domain_cooldown.domain,
        )
    )
