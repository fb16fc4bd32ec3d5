"""``SqlStorage``: pools shared by a fleet, in PostgreSQL (psycopg 3) or SQLite.

PostgreSQL acquires and releases in one round trip each: one autocommitted
statement (see ``sql_statements``). SQLite runs the same steps in one
``BEGIN IMMEDIATE`` transaction, WAL journal and a busy timeout, so several
processes can share one file. Every step may be retried after a dropped
connection: an acquire carries its lease id, and a retry first looks for that
lease, so a lost reply never leaks a slot. Driver errors leave as StorageError.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID, uuid4

from sqlalchemy import Connection, create_engine, event, select
from sqlalchemy.engine import URL, CursorResult, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InvalidatePoolError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

from ..exceptions import (
    PoolNotFoundError,
    ProxyNotFoundError,
    ProxyUnavailableError,
    StorageError,
    UnsupportedStorageURLError,
)
from ..models import (
    CooldownPolicy,
    DomainCooldown,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    PoolStatsSnapshot,
    Proxy,
    ProxyFilters,
    ProxyPool,
    ProxyStatus,
    SelectorStrategy,
    haversine_km,
    mask_url_password,
)
from . import sql_errors
from . import sql_outcomes as outcomes
from . import sql_statements as sql
from .base import IStorage, check_lease_seconds
from .sql_rows import build_lease, lease_from_row, pool_from_row, proxy_from_row

if TYPE_CHECKING:
    from .sql_lane import LeaseLane
from .sql_schema import create_schema, pool_table, proxy_table

#: How long a SQLite connection waits for another process's write lock.
SQLITE_BUSY_SECONDS = 30.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqlStorage(IStorage):
    """An IStorage in PostgreSQL or SQLite through SQLAlchemy 2 Core.

    ``url`` is ``postgresql+psycopg://user:password@host:port/db`` or
    ``sqlite:///path/to/file.db``; ``engine_kwargs`` go to ``create_engine``
    (``hide_parameters=True`` unless given). A step that fails on a dropped
    connection or a restarting server is tried again for up to ``retry_seconds``.

    On PostgreSQL, acquire and release run on connections of their own
    (``sql_lane``), which notice a connection the server closed without a
    round trip; awaited from a coroutine (``acquire_async``), they share
    round trips with other coroutines' (``native_async``). The engine serves
    the rest: its pooled connection is pinged before use when it sat idle for
    ``ping_after_idle_seconds`` (None: never), the staleness that SQLAlchemy's
    ``pool_pre_ping`` guards against without its round trip on every checkout;
    pass ``pool_pre_ping=True`` to ping on every checkout instead. Call
    ``create_schema()`` once before use (``open_storage`` does).
    """

    def __init__(
        self,
        url: str | URL,
        *,
        retry_seconds: float = 10.0,
        ping_after_idle_seconds: float | None = 1.0,
        **engine_kwargs: Any,
    ) -> None:
        self._url = _sql_url(url)
        self._shown_url = self._url.render_as_string(hide_password=True)
        self._postgres = self._url.get_backend_name() == "postgresql"
        self._dialect_name = "postgresql" if self._postgres else "sqlite"
        self._retry_seconds = retry_seconds
        self._consumer_ids: dict[str, UUID] = {}
        options: dict[str, Any] = {"hide_parameters": True, **engine_kwargs}
        connect_args = dict(options.pop("connect_args", {}))
        if self._postgres:
            # Every hot step is one statement, atomic on its own: no BEGIN and
            # COMMIT round trips, and no isolation switch at each checkout.
            options["isolation_level"] = "AUTOCOMMIT"
            connect_args.setdefault("connect_timeout", 10)
            if "application_name" not in self._url.query:
                connect_args.setdefault("application_name", "scrapy-pharox")
        else:
            connect_args.setdefault("timeout", SQLITE_BUSY_SECONDS)
            if self._url.database in (None, "", ":memory:"):
                connect_args.setdefault("check_same_thread", False)
                options.setdefault("poolclass", StaticPool)
        try:
            self._engine: Engine = create_engine(
                self._url, connect_args=connect_args, **options
            )
        except (ArgumentError, ImportError, TypeError) as exc:
            raise StorageError(
                f"cannot set up the storage at {self._shown_url}: {exc}"
            ) from exc
        self._lane: LeaseLane | None = None
        if self._postgres:
            self._lane = self._open_lane(connect_args)
            self._transactions_engine: Engine = self._engine.execution_options(
                isolation_level="READ COMMITTED"
            )
            self._serial: AbstractContextManager[Any] = nullcontext()
            if ping_after_idle_seconds is not None and not options.get("pool_pre_ping"):
                _ping_when_idle(self._engine, ping_after_idle_seconds)
        else:
            event.listen(self._engine, "connect", _prepare_sqlite_connection)
            event.listen(self._engine, "begin", _begin_sqlite)
            # Reads need no write lock: WAL lets them run beside a writer.
            self._reading_engine = self._engine.execution_options(
                pharox_begin="BEGIN DEFERRED"
            )
            # One writer at a time anyway; in-process threads queue here instead
            # of spinning in SQLite's busy handler.
            self._serial = threading.Lock()

    def _open_lane(self, connect_args: dict[str, Any]) -> LeaseLane:
        from .sql_lane import LeaseLane  # psycopg: PostgreSQL only

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

    def __repr__(self) -> str:
        return f"SqlStorage({self._shown_url!r})"

    @property
    def native_async(self) -> bool:
        return self._lane is not None

    @property
    def lease_connection_hooks(self) -> list[Callable[[Any], None]]:
        """Called with each psycopg connection the PostgreSQL acquire and release
        open (they bypass the engine); empty on SQLite, which has none."""
        return self._lane.connection_hooks if self._lane is not None else []

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (autocommit on PostgreSQL), for event listeners.

        On PostgreSQL, acquire and release do not use it: see
        ``lease_connection_hooks``.
        """
        return self._engine

    def create_schema(self) -> None:
        """Create the tables if missing and check the schema version (idempotent).

        Safe to call from many processes at once. A database holding another
        schema version raises StorageError and is left untouched; so does an
        unreachable one, naming its host (password masked).
        """
        self._run(
            "creating the schema",
            lambda conn, _: create_schema(conn, self._shown_url),
            transaction=True,
            retry=False,
        )

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
        self._engine.dispose()

    # -- administration -------------------------------------------------------

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        def work(conn: Connection, _: bool) -> ProxyPool:
            conn.execute(
                sql.insert_ignoring_conflicts(self._dialect_name, pool_table),
                {"id": pool.id, "name": pool.name, "description": pool.description},
            )
            row = conn.execute(sql.pool_named(), {"pool_name": pool.name}).first()
            if row is None:
                raise StorageError(f"pool id {pool.id} belongs to another pool")
            return pool_from_row(row)

        return self._run("adding a pool", work, transaction=True)

    def add_proxy(self, proxy: Proxy) -> Proxy:
        key = {
            "proxy_id": proxy.id,
            "pool_key": proxy.pool_id,
            "protocol": proxy.protocol.value,
            "host_key": proxy.host.lower(),
            "port": proxy.port,
            "username_key": proxy.credentials.user if proxy.credentials else "",
        }

        def work(conn: Connection, _: bool) -> Proxy:
            same = conn.execute(sql.same_proxy(), key).first()
            if same is not None:
                return proxy_from_row(same)
            if not conn.execute(sql.pool_exists(), key).scalar():
                raise PoolNotFoundError(f"no pool with id {proxy.pool_id}")
            conn.execute(
                sql.insert_ignoring_conflicts(self._dialect_name, proxy_table),
                _proxy_values(proxy),
            )
            return proxy_from_row(conn.execute(sql.same_proxy(), key).one())

        return self._run("adding a proxy", work, transaction=True)

    def list_pools(self) -> list[ProxyPool]:
        return self._run(
            "listing pools",
            lambda conn, _: [
                pool_from_row(row) for row in conn.execute(sql.all_pools())
            ],
            read_only=True,
        )

    def list_proxies(self, pool_name: str) -> list[Proxy]:
        return self._run(
            "listing proxies",
            lambda conn, _: [
                proxy_from_row(row)
                for row in conn.execute(sql.proxies_of_pool(), {"pool_name": pool_name})
            ],
            read_only=True,
        )

    def ensure_consumer(self, consumer_name: str) -> UUID:
        known = self._consumer_ids.get(consumer_name)
        if known is not None:
            return known
        consumer_id: UUID = self._run(
            "registering a consumer",
            lambda conn, _: conn.execute(
                sql.upsert_consumer(self._dialect_name),
                {"id": uuid4(), "name": consumer_name},
            ).scalar_one(),
        )
        self._consumer_ids[consumer_name] = consumer_id
        return consumer_id

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        row = self._run(
            "reading pool stats",
            lambda conn, _: conn.execute(
                sql.pool_stats(), {"pool_name": pool_name}
            ).first(),
            read_only=True,
        )
        if row is None:
            return None
        return PoolStatsSnapshot(pool_name=pool_name, **row._asdict())

    # -- leasing --------------------------------------------------------------

    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Proxy | None:
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        statement = sql.find_proxy(strategy, filters, domain is not None)
        params = {"pool_name": pool_name, "target_domain": domain}
        row = self._run(
            "finding a proxy",
            lambda conn, _: conn.execute(statement, params).first(),
            read_only=True,
        )
        return proxy_from_row(row) if row is not None else None

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        seconds = check_lease_seconds(duration_seconds)
        params = {
            "proxy_id": proxy.id,
            "lease_id": uuid4(),
            "consumer_id": self.ensure_consumer(consumer_name),
            "seconds": seconds,
        }

        def work(conn: Connection, retrying: bool) -> Lease:
            if retrying and (lease := self._lease_by_id(conn, params)) is not None:
                return lease
            if self._postgres:
                row = _run_prepared(conn, sql.pg_lease_proxy(), params).one()
                if row.id is None:
                    raise _unavailable(proxy, known=row.proxy_known)
                return lease_from_row(row, params, row.pool_name)
            claimed = conn.execute(sql.claim_proxy(), params).first()
            if claimed is None:
                known = conn.execute(sql.proxy_exists(), params).scalar()
                raise _unavailable(proxy, known=bool(known))
            pool_row = conn.execute(
                select(pool_table.c.name).where(pool_table.c.id == claimed.pool_id)
            ).scalar_one()
            return self._insert_lease(conn, claimed, params, pool_row, None)

        return self._run("leasing a proxy", work)

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
        params = _acquire_parameters(pool_name, consumer_id, duration_seconds, domain)
        if self._lane is not None:
            statement = sql.pg_acquire(strategy, filters, domain is not None)
            return self._lane.acquire(statement, params)
        return self._run(
            "acquiring a proxy",
            lambda conn, retrying: self._sqlite_acquire(
                conn, retrying, strategy, filters, params
            ),
        )

    async def acquire_async(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Lease | None:
        if self._lane is None:
            return await super().acquire_async(
                pool_name, consumer_name, duration_seconds, filters, selector, domain
            )
        check_lease_seconds(duration_seconds)
        consumer_id = self._consumer_ids.get(consumer_name)
        if consumer_id is None:  # once per consumer name
            consumer_id = await asyncio.to_thread(self.ensure_consumer, consumer_name)
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        params = _acquire_parameters(pool_name, consumer_id, duration_seconds, domain)
        statement = sql.pg_acquire(strategy, filters, domain is not None)
        return await self._lane.acquire_async(statement, params)

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        if self._lane is None:
            return await super().release_lease_async(lease, report)
        params = _release_parameters(lease, report)
        return await self._lane.release_async(
            _pg_release_statement(report), params, lease.proxy_id
        )

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        params = _release_parameters(lease, report)
        if self._lane is not None:
            return self._lane.release(
                _pg_release_statement(report), params, lease.proxy_id
            )

        def work(conn: Connection, _: bool) -> bool:
            gone = conn.execute(sql.remove_lease(), params).all()
            _end_leases(conn, gone, "released")
            if gone and report is not None:
                _record_sqlite_outcome(conn, gone[0].proxy_id, report, params)
            return bool(gone)

        return self._run("releasing a lease", work)

    def cleanup_expired_leases(self) -> int:
        return self._run("reclaiming expired leases", lambda conn, _: _reclaim(conn))

    # -- health -----------------------------------------------------------------

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

        def work(conn: Connection, _: bool) -> Proxy:
            if self._postgres and reset_cooldown:
                statement: Any = outcomes.pg_set_status_resetting(**shape)
            else:
                statement = outcomes.set_status(**shape, reset=reset_cooldown)
            row = conn.execute(statement, params).first()
            if row is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            if reset_cooldown and not self._postgres:
                conn.execute(outcomes.clear_domain_cooldowns(), params)
            return proxy_from_row(row)

        return self._run("setting a proxy's status", work)

    def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]:
        return self._run(
            "listing domain cooldowns",
            lambda conn, _: [
                DomainCooldown.model_construct(
                    proxy_id=row.proxy_id,
                    domain=row.domain,
                    consecutive_bans=row.consecutive_bans,
                    cooldown_until=row.cooldown_until,
                )
                for row in conn.execute(
                    outcomes.domain_cooldowns_of_pool(), {"pool_name": pool_name}
                )
            ],
            read_only=True,
        )

    # -- internals ----------------------------------------------------------------

    def _sqlite_acquire(
        self,
        conn: Connection,
        retrying: bool,
        strategy: SelectorStrategy,
        filters: ProxyFilters | None,
        params: dict[str, Any],
    ) -> Lease | None:
        if retrying and (lease := self._lease_by_id(conn, params)) is not None:
            return lease
        if conn.execute(select(sql.expired_lease_exists())).scalar():
            _reclaim(conn)
        by_domain = params["target_domain"] is not None
        picked = conn.execute(
            sql.find_proxy(strategy, filters, by_domain), params
        ).first()
        if picked is None:
            return None
        # The transaction holds the write lock: the pick is still free.
        claimed = conn.execute(sql.claim_proxy(), {"proxy_id": picked.id}).one()
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
            sql.insert_lease(),
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
                sql.move_cursor(), {"pool_key": claimed.pool_id, "cursor": cursor}
            )
        return build_lease(claimed, times, params, pool_name)

    def _lease_by_id(self, conn: Connection, params: dict[str, Any]) -> Lease | None:
        """The lease an earlier try of this call took, when its reply was lost."""
        row = conn.execute(sql.lease_with_proxy(), params).first()
        if row is None:
            return None
        logger.warning(
            "lease %s was taken by a try whose reply was lost; returning it",
            params["lease_id"],
        )
        pool_name = (
            params.get("pool_name")
            or conn.execute(
                select(pool_table.c.name).where(pool_table.c.id == row.pool_id)
            ).scalar_one()
        )
        return lease_from_row(row, params, pool_name)

    def _run(
        self,
        action: str,
        work: Callable[[Connection, bool], T],
        *,
        transaction: bool = False,
        read_only: bool = False,
        retry: bool = True,
    ) -> T:
        """Run ``work`` on a connection, again on a transient failure, translated.

        ``work`` gets ``retrying=True`` on every try after the first.
        """
        tries = sql_errors.Retry(self._retry_seconds)
        while True:
            try:
                with self._serial, self._connection(transaction, read_only) as conn:
                    return work(conn, tries.retrying)
            except DBAPIError as exc:
                if not (retry and self._transient(exc) and tries.allowed()):
                    raise self._storage_error(action, exc) from exc
                logger.warning(
                    "%s on %s failed (%s); trying again",
                    action,
                    self._shown_url,
                    sql_errors.reason(exc.orig),
                )
            except SQLAlchemyError as exc:
                raise self._storage_error(action, exc) from exc
            time.sleep(tries.next_delay())

    @contextmanager
    def _connection(self, transaction: bool, read_only: bool) -> Iterator[Connection]:
        if not self._postgres:
            engine = self._reading_engine if read_only else self._engine
            with engine.begin() as conn:
                yield conn
        elif transaction:
            with self._transactions_engine.begin() as conn:
                yield conn
        else:
            with self._engine.connect() as conn:
                yield conn

    def _transient(self, exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        if not self._postgres:
            text = str(exc.orig).lower()
            return "locked" in text or "busy" in text
        return sql_errors.transient(exc.orig)

    def _storage_error(self, action: str, exc: BaseException) -> StorageError:
        """``exc`` (SQLAlchemy's or the driver's) as a StorageError naming where."""
        source = exc.orig if isinstance(exc, DBAPIError) else exc
        reason = sql_errors.reason(source)
        if self._postgres and sql_errors.unreachable(source):
            host = self._url.host or "localhost"
            port = self._url.port or 5432
            return StorageError(
                f"cannot reach the database at {host}:{port} ({self._shown_url}) "
                f"while {action}: {reason}"
            )
        return StorageError(f"{action} failed on {self._shown_url}: {reason}")


# -- helpers -----------------------------------------------------------------------


def _sql_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UnsupportedStorageURLError(
            f"invalid storage URL {mask_url_password(str(url))!r}: {exc}"
        ) from None
    if parsed.drivername in ("postgresql", "postgresql+psycopg"):
        # Plain postgresql:// means psycopg 3 here, the driver we depend on.
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed
    raise UnsupportedStorageURLError(
        f"unsupported SQL storage URL {parsed.render_as_string(hide_password=True)!r}:"
        " use postgresql+psycopg://user:password@host:port/db or sqlite:///path"
    )


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


def _run_prepared(
    conn: Connection, statement: sql.Prepared, params: dict[str, Any]
) -> CursorResult[Any]:
    return conn.exec_driver_sql(statement.sql, statement.parameters(params))


def _reclaim(conn: Connection) -> int:
    if conn.dialect.name == "postgresql":
        return int(_run_prepared(conn, sql.pg_reclaim(), {}).scalar_one())
    gone = conn.execute(sql.remove_expired_leases()).all()
    _end_leases(conn, gone, "expired")
    return len(gone)


def _end_leases(conn: Connection, gone: Sequence[Any], outcome: str) -> None:
    """SQLite: give back the slots of leases just removed and log them."""
    if not gone:
        return
    slots: dict[UUID, int] = {}
    for row in gone:
        slots[row.proxy_id] = slots.get(row.proxy_id, 0) + 1
    conn.execute(
        sql.give_back_slots(),
        [{"proxy_key": key, "slots": count} for key, count in slots.items()],
    )
    conn.execute(sql.log_leases(outcome), [row._asdict() for row in gone])


def _acquire_parameters(
    pool_name: str, consumer_id: UUID, duration_seconds: float, domain: str | None
) -> dict[str, Any]:
    """An acquire's parameters, with the new lease's id (a retry finds it by it)."""
    return {
        "pool_name": pool_name,
        "lease_id": uuid4(),
        "consumer_id": consumer_id,
        "seconds": check_lease_seconds(duration_seconds),
        "target_domain": domain,
    }


def _release_parameters(lease: Lease, report: OutcomeReport | None) -> dict[str, Any]:
    params: dict[str, Any] = {"lease_id": lease.id}
    if report is not None:
        params.update(_outcome_parameters(report))
    return params


def _pg_release_statement(report: OutcomeReport | None) -> sql.Prepared:
    if report is None:
        return sql.pg_release()
    return outcomes.pg_release_reported(report.outcome, report.domain is not None)


def _outcome_parameters(report: OutcomeReport) -> dict[str, Any]:
    """The parameters of the statements that record an outcome (sql_health)."""
    policy = report.policy
    return {
        "latency": None if report.latency_ms is None else float(report.latency_ms),
        "target_domain": report.domain,
        "base_seconds": float(policy.base_seconds),
        "max_seconds": float(policy.max_seconds),
        "jitter": float(policy.jitter),
        "draw": float(report.draw),
        "failures_before_cooldown": policy.failures_before_cooldown,
    }


def _record_sqlite_outcome(
    conn: Connection, proxy_id: UUID, report: OutcomeReport, params: dict[str, Any]
) -> None:
    """SQLite: the outcome of a lease just removed, in its transaction."""
    outcome = {**params, "proxy_key": proxy_id}
    by_domain = report.domain is not None
    conn.execute(outcomes.record_outcome(report.outcome, by_domain), outcome)
    if by_domain and report.outcome is LeaseOutcome.BAN:
        conn.execute(outcomes.sqlite_domain_ban(), outcome)
    elif by_domain and report.outcome is LeaseOutcome.SUCCESS:
        conn.execute(outcomes.sqlite_domain_success(), outcome)


def _unavailable(proxy: Proxy, *, known: bool) -> ProxyUnavailableError:
    if not known:
        return ProxyUnavailableError(f"proxy {proxy.id} is not in storage")
    return ProxyUnavailableError(f"proxy {proxy.id} has no free slot")


def _proxy_values(proxy: Proxy) -> dict[str, Any]:
    credentials = proxy.credentials
    return {
        "id": proxy.id,
        "pool_id": proxy.pool_id,
        "protocol": proxy.protocol.value,
        "host": proxy.host,
        "host_key": proxy.host.lower(),
        "port": proxy.port,
        "username": credentials.user if credentials else None,
        "password": credentials.password if credentials else None,
        "status": proxy.status.value,
        "checked_at": proxy.checked_at,
        "source": proxy.source,
        "country": proxy.country,
        "city": proxy.city,
        "latitude": proxy.latitude,
        "longitude": proxy.longitude,
        "isp": proxy.isp,
        "asn": proxy.asn,
        "max_concurrency": proxy.max_concurrency,
        "current_leases": 0,
        "successes": proxy.successes,
        "bans": proxy.bans,
        "failures": proxy.failures,
        "consecutive_bans": proxy.consecutive_bans,
        "consecutive_failures": proxy.consecutive_failures,
        "latency_ms": proxy.latency_ms,
        "cooldown_until": proxy.cooldown_until,
    }
