"""``PostgresStorage``: SqlStorage on PostgreSQL, one statement per operation.

Acquire, release and reclaim are one autocommitted statement each
(``sql_leasing``, ``sql_outcomes``; their text is in ``statements/``): no
BEGIN and COMMIT round trips. They run on the lease lane's own psycopg
connections (``sql_lane``), which notice a connection the server closed without
a round trip; awaited from a coroutine (``acquire_async``), they share round
trips with other coroutines'. The engine serves the rest: its pooled connection
is pinged before use when it sat idle for ``ping_after_idle_seconds`` (None:
never), the staleness SQLAlchemy's ``pool_pre_ping`` guards against without its
round trip on every checkout; pass ``pool_pre_ping=True`` to ping on every
checkout instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, event
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import DBAPIError, InvalidatePoolError

from ..exceptions import ProxyNotFoundError
from ..models import (
    Lease,
    OutcomeReport,
    Proxy,
    ProxyFilters,
    ProxyStatus,
    SelectorStrategy,
)
from . import sql_clauses as clauses
from . import sql_errors
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from .base import check_lease_seconds
from .sql import (
    SqlStorage,
    _unavailable,
)
from .sql_lane import LeaseLane
from .sql_rows import (
    acquire_parameters,
    lease_from_row,
    proxy_from_row,
    release_parameters,
)


class PostgresStorage(SqlStorage):
    """SqlStorage on PostgreSQL (psycopg 3); see the module's docstring."""

    dialect_name = "postgresql"

    def _configure(self, options: dict[str, Any], connect_args: dict[str, Any]) -> None:
        # Every hot step is one statement, atomic on its own: no BEGIN and
        # COMMIT round trips, and no isolation switch at each checkout.
        options["isolation_level"] = "AUTOCOMMIT"
        connect_args.setdefault("connect_timeout", 10)
        if "application_name" not in self._url.query:
            connect_args.setdefault("application_name", "scrapy-pharox")

    def _engine_ready(
        self,
        connect_args: dict[str, Any],
        options: dict[str, Any],
        ping_after_idle_seconds: float | None,
    ) -> None:
        self._lane = self._open_lane(connect_args)
        self._transactions_engine: Engine = self._engine.execution_options(
            isolation_level="READ COMMITTED"
        )
        if ping_after_idle_seconds is not None and not options.get("pool_pre_ping"):
            _ping_when_idle(self._engine, ping_after_idle_seconds)

    def _open_lane(self, connect_args: dict[str, Any]) -> LeaseLane:
        _, dialect_kwargs = self._engine.dialect.create_connect_args(self._url)
        # SQLAlchemy's type adapters are for its own statements; the lane binds
        # and reads native types only.
        dialect_kwargs.pop("context", None)
        return LeaseLane(
            {**dialect_kwargs, **connect_args},
            shown_url=self._shown_url,
            describe=self._storage_error,
            retry_seconds=self._retry_seconds,
        )

    @property
    def native_async(self) -> bool:
        return True

    @property
    def lease_connection_hooks(self) -> list[Callable[[Any], None]]:
        return self._lane.connection_hooks

    def close(self) -> None:
        self._lane.close()
        super().close()

    # -- leasing --------------------------------------------------------------

    def acquire(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Lease | None:
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        check_lease_seconds(duration_seconds)
        consumer_id = self.ensure_consumer(consumer_name)
        params = acquire_parameters(pool_name, consumer_id, duration_seconds, domain)
        statement = leasing.pg_acquire(strategy, filters, domain is not None)
        return self._lane.acquire(statement, params)

    async def acquire_async(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Lease | None:
        check_lease_seconds(duration_seconds)
        consumer_id = self._consumer_ids.get(consumer_name)
        if consumer_id is None:  # once per consumer name
            consumer_id = await asyncio.to_thread(self.ensure_consumer, consumer_name)
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        params = acquire_parameters(pool_name, consumer_id, duration_seconds, domain)
        statement = leasing.pg_acquire(strategy, filters, domain is not None)
        return await self._lane.acquire_async(statement, params)

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        params = self._lease_parameters(proxy, consumer_name, duration_seconds)

        def work(conn: Connection, retrying: bool) -> Lease:
            if retrying and (lease := self._lease_by_id(conn, params)) is not None:
                return lease
            row = _run_prepared(conn, leasing.pg_lease_proxy(), params).one()
            if row.id is None:
                raise _unavailable(proxy, known=row.proxy_known)
            return lease_from_row(row, params, row.pool_name)

        return self._run("leasing a proxy", work)

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        params = release_parameters(lease, report)
        return self._lane.release(_release_statement(report), params, lease.proxy_id)

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        params = release_parameters(lease, report)
        return await self._lane.release_async(
            _release_statement(report), params, lease.proxy_id
        )

    def cleanup_expired_leases(self) -> int:
        return self._run(
            "reclaiming expired leases",
            lambda conn, _: int(
                _run_prepared(conn, expiry.pg_reclaim(), {}).scalar_one()
            ),
        )

    def set_proxy_status(
        self,
        proxy_id: UUID,
        status: ProxyStatus,
        *,
        latency_ms: float | None = None,
        checked: bool = False,
        reset_cooldown: bool = False,
    ) -> Proxy:
        shape = {"latency": latency_ms is not None, "checked": checked}
        params = {
            "proxy_id": proxy_id,
            "new_status": ProxyStatus(status).value,
            "latency": latency_ms,
        }
        if reset_cooldown:  # its domain cooldowns end in the same statement
            statement: Any = outcomes.pg_set_status_resetting(**shape)
        else:
            statement = outcomes.set_status(**shape, reset=False)

        def work(conn: Connection, _: bool) -> Proxy:
            row = conn.execute(statement, params).first()
            if row is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            return proxy_from_row(row)

        return self._run("setting a proxy's status", work)

    # -- internals ----------------------------------------------------------------

    @contextmanager
    def _connection(self, transaction: bool, read_only: bool) -> Iterator[Connection]:
        engine = self._transactions_engine if transaction else self._engine
        with engine.begin() if transaction else engine.connect() as conn:
            yield conn

    def _transient(self, exc: DBAPIError) -> bool:
        return bool(exc.connection_invalidated) or sql_errors.transient(exc.orig)


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout when it was idle ``idle_seconds``.

    A failed ping makes the pool drop it, and every connection older, and
    connect anew: the database was probably restarted.
    """

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["pharox_idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop("pharox_idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise InvalidatePoolError(f"idle connection lost: {exc}") from exc

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def _run_prepared(
    conn: Connection, statement: clauses.Prepared, params: dict[str, Any]
) -> CursorResult[Any]:
    return conn.exec_driver_sql(statement.sql, statement.parameters(params))


def _release_statement(report: OutcomeReport | None) -> clauses.Prepared:
    if report is None:
        return leasing.pg_release()
    return outcomes.pg_release_reported(report.outcome, report.domain is not None)
