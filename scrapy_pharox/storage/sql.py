"""``SqlStorage``: pools shared by a fleet, in PostgreSQL (psycopg 3) or SQLite.

``SqlStorage(url)`` is the adapter of the URL's dialect: ``PostgresStorage``
(``postgresql``) or ``SqliteStorage`` (``sqlite``). This base holds what both
share: the schema, the administration, reads, sessions (``sql_sessions``)
and live lists (``sql_sources``).
Every operation is written as its steps (``sql_query.Steps``) and run by the
one executor (``sql_executor``), which retries, recovers lost replies and
translates driver errors into StorageError, over the dialect's driver. Each
dialect module writes the leasing operations as its own statements: PostgreSQL
one autocommitted statement each, SQLite its steps in one ``BEGIN IMMEDIATE``
transaction. An acquire carries its lease id, and a retry first looks for that
lease, so a lost reply never leaks a slot. SQLAlchemy builds and compiles the
statements; it runs none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError

from ..exceptions import (
    PoolNotFoundError,
    ProxyUnavailableError,
    StorageError,
    UnsupportedStorageURLError,
)
from ..models import (
    DomainCooldown,
    Lease,
    PoolStatsSnapshot,
    Proxy,
    ProxyFilters,
    ProxyPool,
    SelectorStrategy,
    credentials_problem,
    mask_url_password,
    new_id,
)
from . import sql_admin as admin
from . import sql_errors
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from .base import IStorage, check_lease_seconds
from .sql_executor import Driver, Executor, Pipeliner
from .sql_identities import SqlIdentities
from .sql_query import ALL, FIRST, Query, Steps, prepared
from .sql_rows import pool_from_row, proxy_from_row, proxy_values, utc
from .sql_schema import create_schema, pool_table, proxy_table
from .sql_sessions import SqlSessions
from .sql_sources import SqlSources

logger = logging.getLogger(__name__)


class SqlStorage(SqlSessions, SqlSources, SqlIdentities, IStorage):
    """An IStorage in PostgreSQL or SQLite; see the module's docstring.

    ``url`` is ``postgresql+psycopg://user:password@host:port/db`` or
    ``sqlite:///path/to/file.db``; ``connect_args`` go to the driver's connect
    (``psycopg.connect``, ``sqlite3.connect``). An operation that fails on a
    dropped connection, a restarting server or a busy database is tried again
    for up to ``retry_seconds``. Call ``create_schema()`` once before use
    (``open_storage`` does).
    """

    #: The dialect statements are compiled for.
    dialect: ClassVar[Dialect]

    def __new__(cls, url: str | URL, **options: Any) -> SqlStorage:
        if cls is SqlStorage:
            cls = adapter_for(url)
        return super().__new__(cls)

    def __init__(
        self,
        url: str | URL,
        *,
        retry_seconds: float = 10.0,
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        self._url = _sql_url(url)
        self._shown_url = self._url.render_as_string(hide_password=True)
        self._consumer_ids: dict[str, UUID] = {}
        #: Called with every connection the storage opens (psycopg's or
        #: sqlite3's), for tracing or settings of the session.
        self.connection_hooks: list[Callable[[Any], None]] = []
        self._executor = Executor(
            self._driver(dict(connect_args or {})),
            shown_url=self._shown_url,
            describe=self._storage_error,
            retry_seconds=retry_seconds,
            pipeliner=self._pipeliner(),
        )

    def _driver(self, connect_args: dict[str, Any]) -> Driver:
        """The dialect's blocking driver."""
        raise NotImplementedError

    def _pipeliner(self) -> Pipeliner | None:
        """The dialect's runner on the event loop, if it has one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown_url!r})"

    def create_schema(self) -> None:
        """Create the tables if missing and check the schema version (idempotent).

        Safe to call from many processes at once. A database holding another
        schema version raises StorageError and is left untouched; so does an
        unreachable one, naming its host (password masked).
        """
        self._executor.run(
            "creating the schema",
            lambda _: create_schema(self.dialect, self._shown_url),
            atomic=True,
            retry=False,
        )

    def close(self) -> None:
        self._executor.close()

    # -- administration -------------------------------------------------------

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        def steps(_: bool) -> Steps[ProxyPool]:
            yield self._query(
                admin.insert_ignoring_conflicts(self.dialect.name, pool_table),
                {
                    "id": pool.id,
                    "name": pool.name,
                    "description": pool.description,
                    "round_robin_cursor": None,
                },
            )
            row = yield self._query(admin.pool_named(), {"pool_name": pool.name})
            if row is None:
                raise StorageError(f"pool id {pool.id} belongs to another pool")
            return pool_from_row(row)

        return self._executor.run("adding a pool", steps, atomic=True)

    def add_proxy(self, proxy: Proxy) -> Proxy:
        key = {
            "proxy_id": proxy.id,
            "pool_key": proxy.pool_id,
            "protocol": proxy.protocol.value,
            "host_key": proxy.host.lower(),
            "port": proxy.port,
            "who_key": proxy.endpoint_key[3] or "",
        }

        def steps(_: bool) -> Steps[Proxy]:
            same = yield self._query(admin.same_proxy(), key)
            if same is not None:
                return proxy_from_row(same)
            if not (yield self._query(admin.pool_exists(), key))[0]:
                raise PoolNotFoundError(f"no pool with id {proxy.pool_id}")
            yield self._query(
                admin.insert_ignoring_conflicts(self.dialect.name, proxy_table),
                proxy_values(proxy),
            )
            return proxy_from_row((yield self._query(admin.same_proxy(), key)))

        return self._executor.run("adding a proxy", steps, atomic=True)

    def list_pools(self) -> list[ProxyPool]:
        def steps(_: bool) -> Steps[list[ProxyPool]]:
            rows = yield self._query(admin.all_pools(), {}, rows=ALL)
            return [pool_from_row(row) for row in rows]

        return self._executor.run("listing pools", steps, read_only=True)

    def list_proxies(self, pool_name: str) -> list[Proxy]:
        def steps(_: bool) -> Steps[list[Proxy]]:
            rows = yield self._query(
                admin.proxies_of_pool(), {"pool_name": pool_name}, rows=ALL
            )
            return [proxy_from_row(row) for row in rows]

        return self._executor.run("listing proxies", steps, read_only=True)

    def ensure_consumer(self, consumer_name: str) -> UUID:
        known = self._consumer_ids.get(consumer_name)
        if known is not None:
            return known

        def steps(_: bool) -> Steps[UUID]:
            row = yield self._query(
                admin.upsert_consumer(self.dialect.name),
                {"id": uuid4(), "name": consumer_name},
            )
            consumer_id: UUID = row.id
            return consumer_id

        consumer_id = self._executor.run("registering a consumer", steps)
        self._consumer_ids[consumer_name] = consumer_id
        return consumer_id

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        def steps(_: bool) -> Steps[Any]:
            return (yield self._query(admin.pool_stats(), {"pool_name": pool_name}))

        row = self._executor.run("reading pool stats", steps, read_only=True)
        if row is None:
            return None
        return PoolStatsSnapshot(pool_name=pool_name, **row._asdict())

    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Proxy | None:
        strategy = SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)
        statement = leasing.find_proxy(strategy, filters, domain is not None)
        params = {"pool_name": pool_name, "target_domain": domain}

        def steps(_: bool) -> Steps[Any]:
            return (yield self._query(statement, params))

        row = self._executor.run("finding a proxy", steps, read_only=True)
        return proxy_from_row(row) if row is not None else None

    def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]:
        def steps(_: bool) -> Steps[list[DomainCooldown]]:
            rows = yield self._query(
                outcomes.domain_cooldowns_of_pool(), {"pool_name": pool_name}, rows=ALL
            )
            return [
                DomainCooldown.model_construct(
                    proxy_id=row.proxy_id,
                    domain=row.domain,
                    consecutive_bans=row.consecutive_bans,
                    cooldown_until=None
                    if row.cooldown_until is None
                    else utc(row.cooldown_until),
                )
                for row in rows
            ]

        return self._executor.run("listing domain cooldowns", steps, read_only=True)

    def extend_lease(self, lease: Lease, duration_seconds: float) -> datetime | None:
        params = {
            "lease_id": lease.id,
            "seconds": check_lease_seconds(duration_seconds),
        }
        return self._executor.run(
            "extending a lease", lambda _: expiry.extend_steps(self.dialect, params)
        )

    # -- internals ----------------------------------------------------------------

    def _query(
        self, statement: Any, values: Mapping[str, Any], *, rows: bool = FIRST
    ) -> Query:
        """A query of ``statement`` compiled for this dialect (once)."""
        return Query(prepared(statement, self.dialect), values, rows=rows)

    def _lease_parameters(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> dict[str, Any]:
        """create_lease's parameters, with the new lease's id (a retry finds it
        by it); a bad duration raises before any I/O."""
        seconds = check_lease_seconds(duration_seconds)
        return {
            "proxy_id": proxy.id,
            "lease_id": new_id(),
            "consumer_id": self.ensure_consumer(consumer_name),
            "seconds": seconds,
        }

    def _storage_error(self, action: str, exc: BaseException) -> StorageError:
        """A driver's error as a StorageError naming where, worded for what
        happened: a server out of reach, or one that turned the connection away."""
        reason = sql_errors.reason(exc)
        server = (
            f"{self._url.host or 'localhost'}:{self._url.port or 5432} "
            f"({self._shown_url})"
        )
        refusal = sql_errors.refusal(exc)
        if refusal == "authentication":
            user = f" for user {self._url.username!r}" if self._url.username else ""
            problem = f"authentication failed{user} on the database at {server}"
        elif refusal == "database":
            problem = f"the database {self._url.database!r} does not exist at {server}"
        elif sql_errors.unreachable(exc):
            problem = f"cannot reach the database at {server}"
        else:
            return StorageError(f"{action} failed on {self._shown_url}: {reason}")
        return StorageError(f"{problem} while {action}: {reason}")


# -- helpers -----------------------------------------------------------------------


def adapter_for(url: str | URL) -> type[SqlStorage]:
    """The SqlStorage class of the URL's dialect."""
    if _sql_url(url).get_backend_name() == "postgresql":
        from .postgresql import PostgresStorage

        return PostgresStorage
    from .sqlite import SqliteStorage

    return SqliteStorage


def _sql_url(url: str | URL) -> URL:
    shown = mask_url_password(str(url))
    # Checked before make_url, which would read part of such a password as the
    # host, and show it.
    problem = credentials_problem(url) if isinstance(url, str) else None
    if problem is not None:
        raise UnsupportedStorageURLError(f"malformed storage URL {shown!r}: {problem}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UnsupportedStorageURLError(
            f"malformed storage URL {shown!r}: {exc}"
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


def _unavailable(proxy: Proxy, *, known: bool) -> ProxyUnavailableError:
    if not known:
        return ProxyUnavailableError(f"proxy {proxy.id} is not in storage")
    return ProxyUnavailableError(f"proxy {proxy.id} has no free slot")
