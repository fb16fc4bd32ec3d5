"""``PostgresStorage``: SqlStorage on PostgreSQL, one statement per operation.

Acquire, release and reclaim are one autocommitted statement each
(``sql_leasing``, ``sql_outcomes``; their text is in ``statements/``): no
BEGIN and COMMIT round trips. They run on psycopg connections of the storage's
own (``sql_psycopg``), which notice a connection the server closed without a
round trip; awaited from a coroutine (``acquire_async``), they share round
trips with other coroutines' (``sql_rounds``). A release that takes a full
proxy back under its limit sends a notice at its commit, heard by the waiters
of every process (``pg_release_feed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.dialects import postgresql

from ..exceptions import ProxyNotFoundError
from ..models import (
    Lease,
    OutcomeReport,
    Paced,
    Proxy,
    ProxyFilters,
    ProxyStatus,
    SelectorStrategy,
)
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from . import sql_release as releasing
from .base import check_lease_seconds
from .pg_release_feed import PgReleaseFeed
from .sql import SqlStorage, _unavailable
from .sql_clauses import domain_check
from .sql_psycopg import PsycopgDriver
from .sql_query import POSTGRESQL, Prepared, Query, Steps
from .sql_rounds import Pipeliner
from .sql_rows import (
    acquire_parameters,
    lease_from_row,
    proxy_from_row,
    release_parameters,
)
from .sql_steps import acquire_steps, extend_steps, release_steps


class PostgresStorage(SqlStorage):
    """SqlStorage on PostgreSQL (psycopg 3); see the module's docstring."""

    dialect = POSTGRESQL

    def _driver(self, connect_args: dict[str, Any]) -> PsycopgDriver:
        self._connect_options = self._psycopg_options(connect_args)
        return PsycopgDriver(self._connect_options, self.connection_hooks)

    def _pipeliner(self) -> Pipeliner:
        return Pipeliner(self._connect_options, self.connection_hooks)

    def _psycopg_options(self, connect_args: dict[str, Any]) -> dict[str, Any]:
        """``psycopg.connect``'s keyword arguments for the URL and ``connect_args``."""
        _, options = postgresql.psycopg.dialect().create_connect_args(self._url)  # type: ignore[no-untyped-call]
        # SQLAlchemy's type adapters are for its own statements; the storage
        # binds and reads native types only.
        options.pop("context", None)
        options.setdefault("connect_timeout", 10)
        if "application_name" not in self._url.query:
            options.setdefault("application_name", "scrapy-pharox")
        return {**options, **connect_args, "autocommit": True}

    @property
    def native_async(self) -> bool:
        return True

    def release_feed(self) -> PgReleaseFeed:
        return PgReleaseFeed(
            self._connect_options, self.connection_hooks, self._storage_error
        )

    # -- leasing --------------------------------------------------------------

    def acquire(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
        *,
        reuse_delay: float = 0.0,
    ) -> Lease | Paced | None:
        check_lease_seconds(duration_seconds)
        consumer_id = self.ensure_consumer(consumer_name)
        steps = _acquire(
            pool_name,
            consumer_id,
            duration_seconds,
            filters,
            selector,
            domain,
            reuse_delay,
        )
        return self._executor.run("acquiring a proxy", steps)

    async def acquire_async(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
        *,
        reuse_delay: float = 0.0,
    ) -> Lease | Paced | None:
        check_lease_seconds(duration_seconds)
        consumer_id = self._consumer_ids.get(consumer_name)
        if consumer_id is None:  # once per consumer name
            consumer_id = await asyncio.to_thread(self.ensure_consumer, consumer_name)
        steps = _acquire(
            pool_name,
            consumer_id,
            duration_seconds,
            filters,
            selector,
            domain,
            reuse_delay,
        )
        return await self._executor.run_async("acquiring a proxy", steps)

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        params = self._lease_parameters(proxy, consumer_name, duration_seconds)

        def steps(retrying: bool) -> Steps[Lease]:
            if retrying:
                lease = yield from expiry.taken_before(POSTGRESQL, params)
                if lease is not None:
                    return lease
            row = yield Query(leasing.pg_lease_proxy(), params)
            if row.id is None:
                raise _unavailable(proxy, known=row.proxy_known)
            return lease_from_row(row, params, row.pool_name)

        return self._executor.run("leasing a proxy", steps)

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        params = release_parameters(lease, report)
        statement = _release_statement(report)
        return self._executor.run(
            "releasing a lease",
            lambda _: release_steps(statement, params, lease.proxy_id),
        )

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        params = release_parameters(lease, report)
        statement = _release_statement(report)
        return await self._executor.run_async(
            "releasing a lease",
            lambda _: release_steps(statement, params, lease.proxy_id),
        )

    async def extend_lease_async(
        self, lease: Lease, duration_seconds: float
    ) -> datetime | None:
        params = {
            "lease_id": lease.id,
            "seconds": check_lease_seconds(duration_seconds),
        }
        return await self._executor.run_async(
            "extending a lease", lambda _: extend_steps(params, lease.id)
        )

    def cleanup_expired_leases(self) -> int:
        def steps(_: bool) -> Steps[int]:
            row = yield Query(expiry.pg_reclaim(), {})
            return int(row[0])

        return self._executor.run("reclaiming expired leases", steps)

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

        def steps(_: bool) -> Steps[Proxy]:
            row = yield self._query(statement, params)
            if row is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            return proxy_from_row(row)

        return self._executor.run("setting a proxy's status", steps)


def _acquire(
    pool_name: str,
    consumer_id: UUID,
    duration_seconds: float,
    filters: ProxyFilters | None,
    selector: SelectorStrategy | None,
    domain: str | None,
    reuse_delay: float,
) -> Callable[[bool], Steps[Lease | Paced | None]]:
    """An acquire's steps, given whether they are a retry."""
    strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
    params = acquire_parameters(
        pool_name, consumer_id, duration_seconds, domain, reuse_delay
    )
    check = domain_check(domain, params.get("reuse_delay", 0.0))
    statement = leasing.pg_acquire(strategy, filters, check)

    def flags() -> Prepared | None:  # built after a miss only
        return leasing.pg_acquire_flags(strategy, filters, check)

    return lambda retrying: acquire_steps(statement, params, retrying, flags)


def _release_statement(report: OutcomeReport | None) -> Prepared:
    if report is None:
        return releasing.pg_release()
    return outcomes.pg_release_reported(report.outcome, report.domain is not None)
