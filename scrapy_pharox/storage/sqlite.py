"""``SqliteStorage``: SqlStorage on SQLite, one immediate transaction per operation.

SQLite has no data-modifying CTEs, so each operation runs its steps one after
another inside one ``BEGIN IMMEDIATE`` transaction (``sql_leasing``,
``sql_outcomes``) on the storage's one connection (``sqlite_driver``: WAL
journal and a busy timeout, so several processes can share one file). Reads
take a deferred transaction: WAL lets them run beside a writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, select

from ..exceptions import ProxyNotFoundError
from ..models import (
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Paced,
    Proxy,
    ProxyFilters,
    ProxyStatus,
    SelectorStrategy,
)
from . import sql_admin as admin
from . import sql_clauses as clauses
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from . import sql_release as releasing
from .base import check_lease_seconds
from .sql import SqlStorage, _unavailable
from .sql_query import ALL, SQLITE, Steps
from .sql_rows import (
    acquire_parameters,
    build_lease,
    paced_or_none,
    proxy_from_row,
    release_parameters,
)
from .sql_schema import pool_table
from .sqlite_driver import SqliteDriver
from .sqlite_release_feed import SqliteReleaseFeed


class SqliteStorage(SqlStorage):
    """SqlStorage on SQLite; see the module's docstring."""

    dialect = SQLITE

    def _driver(self, connect_args: dict[str, Any]) -> SqliteDriver:
        database = self._url.database or ":memory:"
        return SqliteDriver(database, connect_args, self.connection_hooks)

    def release_feed(self) -> SqliteReleaseFeed | None:
        database = self._url.database or ":memory:"
        if database == ":memory:" or database.startswith("file::memory:"):
            return None  # one connection: no other process to hear
        return SqliteReleaseFeed(database, self._storage_error)

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
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        check_lease_seconds(duration_seconds)
        consumer_id = self.ensure_consumer(consumer_name)
        params = acquire_parameters(
            pool_name, consumer_id, duration_seconds, domain, reuse_delay
        )
        return self._executor.run(
            "acquiring a proxy",
            lambda retrying: self._acquire_steps(retrying, strategy, filters, params),
        )

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        params = self._lease_parameters(proxy, consumer_name, duration_seconds)

        def steps(retrying: bool) -> Steps[Lease]:
            if retrying:
                lease = yield from expiry.taken_before(SQLITE, params)
                if lease is not None:
                    return lease
            claimed = yield self._query(leasing.claim_proxy(), params)
            if claimed is None:
                known = (yield self._query(admin.proxy_exists(), params))[0]
                raise _unavailable(proxy, known=bool(known))
            pool_row = yield self._query(_POOL_NAME, {"pool_key": claimed.pool_id})
            return (yield from self._insert_lease(claimed, params, pool_row.name, None))

        return self._executor.run("leasing a proxy", steps)

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        params = release_parameters(lease, report)

        def steps(_: bool) -> Steps[bool]:
            gone = yield self._query(releasing.remove_lease(), params, rows=ALL)
            yield from self._end_leases(gone, "released")
            if gone and report is not None:
                yield from self._record_outcome(gone[0].proxy_id, report, params)
            return bool(gone)

        return self._executor.run("releasing a lease", steps)

    def cleanup_expired_leases(self) -> int:
        return self._executor.run(
            "reclaiming expired leases", lambda _: self._reclaim()
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
        statement = outcomes.set_status(
            latency=latency_ms is not None, checked=checked, reset=reset_cooldown
        )
        params = {
            "proxy_id": proxy_id,
            "new_status": ProxyStatus(status).value,
            "latency": latency_ms,
        }

        def steps(_: bool) -> Steps[Proxy]:
            row = yield self._query(statement, params)
            if row is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            if reset_cooldown:
                yield self._query(outcomes.clear_domain_cooldowns(), params)
            return proxy_from_row(row)

        return self._executor.run("setting a proxy's status", steps)

    # -- the steps ------------------------------------------------------------------

    def _acquire_steps(
        self,
        retrying: bool,
        strategy: SelectorStrategy,
        filters: ProxyFilters | None,
        params: dict[str, Any],
    ) -> Steps[Lease | Paced | None]:
        if retrying:
            lease = yield from expiry.taken_before(SQLITE, params)
            if lease is not None:
                return lease
        if (yield self._query(_EXPIRED_LEASE_EXISTS, {}))[0]:
            yield from self._reclaim()
        check = clauses.domain_check(
            params["target_domain"], params.get("reuse_delay", 0.0)
        )
        picked = yield self._query(leasing.find_proxy(strategy, filters, check), params)
        if picked is None:
            if check != clauses.PACED:
                return None
            row = yield self._query(
                leasing.sqlite_paced_in(strategy, filters, check), params
            )
            return paced_or_none(row)
        # The transaction holds the write lock: the pick is still free.
        claimed = yield self._query(leasing.claim_proxy(), {"proxy_id": picked.id})
        if check == clauses.PACED:
            yield self._query(
                leasing.sqlite_mark_leased(), {**params, "proxy_key": picked.id}
            )
        cursor = picked.id if strategy is SelectorStrategy.ROUND_ROBIN else None
        return (
            yield from self._insert_lease(claimed, params, params["pool_name"], cursor)
        )

    def _insert_lease(
        self, claimed: Any, params: dict[str, Any], pool_name: str, cursor: UUID | None
    ) -> Steps[Lease]:
        times = yield self._query(
            leasing.insert_lease(),
            {
                "id": params["lease_id"],
                "proxy_id": claimed.id,
                "pool_id": claimed.pool_id,
                "consumer_id": params["consumer_id"],
                "seconds": params["seconds"],
            },
        )
        if cursor is not None:
            yield self._query(
                leasing.move_cursor(), {"pool_key": claimed.pool_id, "cursor": cursor}
            )
        return build_lease(claimed, times, params, pool_name)

    def _reclaim(self) -> Steps[int]:
        gone = yield self._query(expiry.remove_expired_leases(), {}, rows=ALL)
        yield from self._end_leases(gone, "expired")
        return len(gone)

    def _end_leases(self, gone: Sequence[Any], outcome: str) -> Steps[None]:
        """Give back the slots of leases just removed and log them."""
        slots: dict[UUID, int] = {}
        for row in gone:
            slots[row.proxy_id] = slots.get(row.proxy_id, 0) + 1
        for key, count in slots.items():
            yield self._query(
                releasing.give_back_slots(), {"proxy_key": key, "slots": count}
            )
        for row in gone:
            yield self._query(releasing.log_leases(outcome), row._asdict())

    def _record_outcome(
        self, proxy_id: UUID, report: OutcomeReport, params: dict[str, Any]
    ) -> Steps[None]:
        """The outcome of a lease just removed, in its transaction."""
        outcome = {**params, "proxy_key": proxy_id}
        by_domain = report.domain is not None
        yield self._query(outcomes.record_outcome(report.outcome, by_domain), outcome)
        if by_domain and report.outcome is LeaseOutcome.BAN:
            yield self._query(outcomes.sqlite_domain_ban(), outcome)
        elif by_domain and report.outcome is LeaseOutcome.SUCCESS:
            yield self._query(outcomes.sqlite_domain_success(), outcome)
        elif by_domain and report.outcome is LeaseOutcome.THROTTLED:
            yield self._query(outcomes.sqlite_domain_throttle(), outcome)


# Whether an expired lease waits to be reclaimed; the name of pool ``pool_key``.
_EXPIRED_LEASE_EXISTS = select(clauses.expired_lease_exists())
_POOL_NAME = select(pool_table.c.name).where(
    pool_table.c.id == bindparam("pool_key", type_=pool_table.c.id.type)
)
