"""``SqliteStorage``: SqlStorage on SQLite, one immediate transaction per operation.

SQLite has no data-modifying CTEs, so each operation runs its steps one after
another inside one ``BEGIN IMMEDIATE`` transaction (``sql_leasing``,
``sql_outcomes``), WAL journal and a busy timeout, so several processes can
share one file. Reads take a deferred transaction: WAL lets them run beside a
writer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, event, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from ..exceptions import ProxyNotFoundError
from ..models import (
    CooldownPolicy,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyFilters,
    ProxyStatus,
    SelectorStrategy,
    haversine_km,
)
from . import sql_admin as admin
from . import sql_clauses as clauses
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from .base import check_lease_seconds
from .sql import (
    SqlStorage,
    _unavailable,
)
from .sql_rows import (
    acquire_parameters,
    build_lease,
    proxy_from_row,
    release_parameters,
)
from .sql_schema import pool_table

#: How long a SQLite connection waits for another process's write lock.
SQLITE_BUSY_SECONDS = 30.0

logger = logging.getLogger(__name__)


class SqliteStorage(SqlStorage):
    """SqlStorage on SQLite; see the module's docstring."""

    dialect_name = "sqlite"

    def _configure(self, options: dict[str, Any], connect_args: dict[str, Any]) -> None:
        connect_args.setdefault("timeout", SQLITE_BUSY_SECONDS)
        if self._url.database in (None, "", ":memory:"):
            connect_args.setdefault("check_same_thread", False)
            options.setdefault("poolclass", StaticPool)

    def _engine_ready(
        self,
        connect_args: dict[str, Any],
        options: dict[str, Any],
        ping_after_idle_seconds: float | None,
    ) -> None:
        event.listen(self._engine, "connect", _prepare_sqlite_connection)
        event.listen(self._engine, "begin", _begin_sqlite)
        # Reads need no write lock: WAL lets them run beside a writer.
        self._reading_engine = self._engine.execution_options(
            pharox_begin="BEGIN DEFERRED"
        )
        # One writer at a time anyway; in-process threads queue here instead
        # of spinning in SQLite's busy handler.
        self._serial = threading.Lock()

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
        return self._run(
            "acquiring a proxy",
            lambda conn, retrying: self._acquire_steps(
                conn, retrying, strategy, filters, params
            ),
        )

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        params = self._lease_parameters(proxy, consumer_name, duration_seconds)

        def work(conn: Connection, retrying: bool) -> Lease:
            if retrying and (lease := self._lease_by_id(conn, params)) is not None:
                return lease
            claimed = conn.execute(leasing.claim_proxy(), params).first()
            if claimed is None:
                known = conn.execute(admin.proxy_exists(), params).scalar()
                raise _unavailable(proxy, known=bool(known))
            pool_name = conn.execute(
                select(pool_table.c.name).where(pool_table.c.id == claimed.pool_id)
            ).scalar_one()
            return self._insert_lease(conn, claimed, params, pool_name, None)

        return self._run("leasing a proxy", work)

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        params = release_parameters(lease, report)

        def work(conn: Connection, _: bool) -> bool:
            gone = conn.execute(leasing.remove_lease(), params).all()
            _end_leases(conn, gone, "released")
            if gone and report is not None:
                _record_outcome(conn, gone[0].proxy_id, report, params)
            return bool(gone)

        return self._run("releasing a lease", work)

    def cleanup_expired_leases(self) -> int:
        return self._run("reclaiming expired leases", lambda conn, _: _reclaim(conn))

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

        def work(conn: Connection, _: bool) -> Proxy:
            row = conn.execute(statement, params).first()
            if row is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            if reset_cooldown:
                conn.execute(outcomes.clear_domain_cooldowns(), params)
            return proxy_from_row(row)

        return self._run("setting a proxy's status", work)

    # -- internals ----------------------------------------------------------------

    def _acquire_steps(
        self,
        conn: Connection,
        retrying: bool,
        strategy: SelectorStrategy,
        filters: ProxyFilters | None,
        params: dict[str, Any],
    ) -> Lease | None:
        if retrying and (lease := self._lease_by_id(conn, params)) is not None:
            return lease
        if conn.execute(select(clauses.expired_lease_exists())).scalar():
            _reclaim(conn)
        by_domain = params["target_domain"] is not None
        picked = conn.execute(
            leasing.find_proxy(strategy, filters, by_domain), params
        ).first()
        if picked is None:
            return None
        # The transaction holds the write lock: the pick is still free.
        claimed = conn.execute(leasing.claim_proxy(), {"proxy_id": picked.id}).one()
        cursor = picked.id if strategy is SelectorStrategy.ROUND_ROBIN else None
        return self._insert_lease(conn, claimed, params, params["pool_name"], cursor)

    def _insert_lease(
        self,
        conn: Connection,
        claimed: Any,
        params: dict[str, Any],
        pool_name: str,
        cursor: UUID | None,
    ) -> Lease:
        times = conn.execute(
            leasing.insert_lease(),
            {
                "id": params["lease_id"],
                "proxy_id": claimed.id,
                "pool_id": claimed.pool_id,
                "consumer_id": params["consumer_id"],
                "seconds": params["seconds"],
            },
        ).one()
        if cursor is not None:
            conn.execute(
                leasing.move_cursor(), {"pool_key": claimed.pool_id, "cursor": cursor}
            )
        return build_lease(claimed, times, params, pool_name)

    @contextmanager
    def _connection(self, transaction: bool, read_only: bool) -> Iterator[Connection]:
        engine = self._reading_engine if read_only else self._engine
        with engine.begin() as conn:
            yield conn

    def _transient(self, exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text


def _prepare_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN IMMEDIATE itself (the "begin" listener below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()
    dbapi_connection.create_function(
        "pharox_haversine_km", 4, _haversine_or_null, deterministic=True
    )
    dbapi_connection.create_function(
        "pharox_cooldown_seconds", 5, _cooldown_seconds, deterministic=True
    )


def _switch_to_wal(cursor: Any) -> None:
    # WAL is kept in the file, so only the first connections ever switch; when
    # several processes open a new file at once, the switch can answer "database
    # is locked" without waiting for the busy timeout: wait for it here.
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _begin_sqlite(conn: Connection) -> None:
    # Writers take the write lock at BEGIN, so two transactions never both read
    # and then fail to upgrade; reads ask for a deferred BEGIN.
    conn.exec_driver_sql(
        conn.get_execution_options().get("pharox_begin", "BEGIN IMMEDIATE")
    )


def _haversine_or_null(
    lat1: float | None, lon1: float | None, lat2: float | None, lon2: float | None
) -> float | None:
    if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
        return None
    return haversine_km(lat1, lon1, lat2, lon2)


def _cooldown_seconds(
    strikes: int, base_seconds: float, max_seconds: float, jitter: float, draw: float
) -> float:
    policy = CooldownPolicy.model_construct(
        base_seconds=base_seconds, max_seconds=max_seconds, jitter=jitter
    )
    return policy.seconds(strikes, draw)


def _reclaim(conn: Connection) -> int:
    gone = conn.execute(expiry.remove_expired_leases()).all()
    _end_leases(conn, gone, "expired")
    return len(gone)


def _end_leases(conn: Connection, gone: Sequence[Any], outcome: str) -> None:
    """Give back the slots of leases just removed and log them."""
    if not gone:
        return
    slots: dict[UUID, int] = {}
    for row in gone:
        slots[row.proxy_id] = slots.get(row.proxy_id, 0) + 1
    conn.execute(
        leasing.give_back_slots(),
        [{"proxy_key": key, "slots": count} for key, count in slots.items()],
    )
    conn.execute(leasing.log_leases(outcome), [row._asdict() for row in gone])


def _record_outcome(
    conn: Connection, proxy_id: UUID, report: OutcomeReport, params: dict[str, Any]
) -> None:
    """The outcome of a lease just removed, in its transaction."""
    outcome = {**params, "proxy_key": proxy_id}
    by_domain = report.domain is not None
    conn.execute(outcomes.record_outcome(report.outcome, by_domain), outcome)
    if by_domain and report.outcome is LeaseOutcome.BAN:
        conn.execute(outcomes.sqlite_domain_ban(), outcome)
    elif by_domain and report.outcome is LeaseOutcome.SUCCESS:
        conn.execute(outcomes.sqlite_domain_success(), outcome)
