"""Gateway exits of the SQL adapters: a renewal is one compare and set on the
proxy's row (the same statement for both dialects) and the exit's domain rows
deleted, in one transaction, run by the one executor. Renewals are rare next to
leases: blocking path only."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sqlalchemy import bindparam, delete, func, null, or_, select, update
from sqlalchemy.sql.dml import ReturningUpdate

from ..exceptions import ProxyNotFoundError
from ..models import Proxy
from .identities import IdentityStorage, check_renewal
from .sql_clauses import DbNow, proxy
from .sql_query import FIRST, Steps
from .sql_rows import proxy_from_row
from .sql_schema import domain_cooldown_table, proxy_table

if TYPE_CHECKING:
    from .sql_executor import Executor
    from .sql_query import Query


@cache
def renew_identity() -> ReturningUpdate[Any]:
    """The exit ``proxy_key`` moved from session ``session_id`` to
    ``new_session_id`` if it holds the first (and at most ``max_leases``
    leases, NULL: any); its row when it was."""
    old: Any = bindparam("session_id", type_=proxy.session_id.type)
    new: Any = bindparam("new_session_id", type_=proxy.session_id.type)
    max_leases = bindparam("max_leases", type_=proxy.current_leases.type)
    return (
        update(proxy_table)
        .where(
            proxy.id == bindparam("proxy_key", type_=proxy.id.type),
            proxy.session_id == old,
            or_(max_leases.is_(None), proxy.current_leases <= max_leases),
        )
        .values(
            # The id is 12 random letters and digits: it is found in the
            # credentials where the template put it, and nowhere else.
            username=func.replace(proxy.username, old, new),
            password=func.replace(proxy.password, old, new),
            session_id=new,
            session_started_at=DbNow(),
            successes=0,
            bans=0,
            failures=0,
            consecutive_bans=0,
            consecutive_failures=0,
            latency_ms=null(),
            cooldown_until=null(),
        )
        .returning(*proxy_table.c)
    )


@cache
def forget_domains() -> Any:
    """The domain rows (cooldowns, reuse delays) of proxy ``proxy_key``."""
    rows = domain_cooldown_table.c
    return delete(domain_cooldown_table).where(
        rows.proxy_id == bindparam("proxy_key", type_=rows.proxy_id.type)
    )


@cache
def proxy_by_id() -> Any:
    """The row of proxy ``proxy_key``."""
    return select(proxy_table).where(
        proxy.id == bindparam("proxy_key", type_=proxy.id.type)
    )


class SqlIdentities(IdentityStorage):
    """The gateway part of ``SqlStorage``."""

    if TYPE_CHECKING:
        _executor: Executor

        def _query(
            self, statement: Any, values: Mapping[str, Any], *, rows: bool = FIRST
        ) -> Query: ...

    def renew_identity(
        self,
        proxy_id: UUID,
        session_id: str,
        new_session_id: str,
        *,
        max_leases: int | None = None,
    ) -> Proxy:
        check_renewal(session_id, new_session_id, max_leases)
        params = {
            "proxy_key": proxy_id,
            "session_id": session_id,
            "new_session_id": new_session_id,
            "max_leases": max_leases,
        }

        def steps(_: bool) -> Steps[Proxy]:
            row = yield self._query(renew_identity(), params)
            if row is not None:
                yield self._query(forget_domains(), params)
                return proxy_from_row(row)
            # Renewed already (maybe by the try whose reply was lost), or busy.
            stored = yield self._query(proxy_by_id(), params)
            if stored is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            return proxy_from_row(stored)

        return self._executor.run("renewing a gateway exit", steps, atomic=True)
