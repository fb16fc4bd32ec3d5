"""``SqlStorage``: pools shared by a fleet, in PostgreSQL (psycopg 3) or SQLite.

``SqlStorage(url)`` is the adapter of the URL's dialect: ``PostgresStorage``
(``postgresql``) or ``SqliteStorage`` (``sqlite``). This base holds what both
share: the engine, the schema, the administration and reads, and ``_run``, which
drives a step on a connection, tries it again after a dropped connection and
translates driver errors into StorageError. Each dialect module writes the
leasing operations as its own statements: PostgreSQL one autocommitted statement
each, SQLite its steps in one ``BEGIN IMMEDIATE`` transaction. An acquire
carries its lease id, and a retry first looks for that lease, so a lost reply
never leaks a slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from sqlalchemy import Connection, create_engine, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

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
    mask_url_password,
)
from . import sql_admin as admin
from . import sql_errors
from . import sql_expiry as expiry
from . import sql_leasing as leasing
from . import sql_outcomes as outcomes
from .base import IStorage, check_lease_seconds
from .sql_rows import lease_from_row, pool_from_row, proxy_from_row, proxy_values
from .sql_schema import create_schema, pool_table, proxy_table

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqlStorage(IStorage):
    """An IStorage in PostgreSQL or SQLite through SQLAlchemy 2 Core.

    ``url`` is ``postgresql+psycopg://user:password@host:port/db`` or
    ``sqlite:///path/to/file.db``; ``engine_kwargs`` go to ``create_engine``
    (``hide_parameters=True`` unless given). A step that fails on a dropped
    connection or a restarting server is tried again for up to ``retry_seconds``.
    ``ping_after_idle_seconds`` is PostgreSQL's (``PostgresStorage``). Call
    ``create_schema()`` once before use (``open_storage`` does).
    """

    #: The dialect's name, as SQLAlchemy spells it.
    dialect_name: ClassVar[str]

    def __new__(cls, url: str | URL, **options: Any) -> SqlStorage:
        if cls is SqlStorage:
            cls = adapter_for(url)
        return super().__new__(cls)

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
        self._retry_seconds = retry_seconds
        self._consumer_ids: dict[str, UUID] = {}
        self._serial: AbstractContextManager[Any] = nullcontext()
        options: dict[str, Any] = {"hide_parameters": True, **engine_kwargs}
        connect_args = dict(options.pop("connect_args", {}))
        self._configure(options, connect_args)
        try:
            self._engine: Engine = create_engine(
                self._url, connect_args=connect_args, **options
            )
        except (ArgumentError, ImportError, TypeError) as exc:
            raise StorageError(
                f"cannot set up the storage at {self._shown_url}: {exc}"
            ) from exc
        self._engine_ready(connect_args, options, ping_after_idle_seconds)

    def _configure(self, options: dict[str, Any], connect_args: dict[str, Any]) -> None:
        """The dialect's engine options and connect arguments, set in place."""

    def _engine_ready(
        self,
        connect_args: dict[str, Any],
        options: dict[str, Any],
        ping_after_idle_seconds: float | None,
    ) -> None:
        """What the dialect sets up once the engine exists."""

    @property
    def lease_connection_hooks(self) -> list[Callable[[Any], None]]:
        """Called with each psycopg connection the PostgreSQL acquire and release
        open (they bypass the engine); empty on SQLite, which has none."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown_url!r})"

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
        self._engine.dispose()

    # -- administration -------------------------------------------------------

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        def work(conn: Connection, _: bool) -> ProxyPool:
            conn.execute(
                admin.insert_ignoring_conflicts(self.dialect_name, pool_table),
                {"id": pool.id, "name": pool.name, "description": pool.description},
            )
            row = conn.execute(admin.pool_named(), {"pool_name": pool.name}).first()
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
            same = conn.execute(admin.same_proxy(), key).first()
            if same is not None:
                return proxy_from_row(same)
            if not conn.execute(admin.pool_exists(), key).scalar():
                raise PoolNotFoundError(f"no pool with id {proxy.pool_id}")
            conn.execute(
                admin.insert_ignoring_conflicts(self.dialect_name, proxy_table),
                proxy_values(proxy),
            )
            return proxy_from_row(conn.execute(admin.same_proxy(), key).one())

        return self._run("adding a proxy", work, transaction=True)

    def list_pools(self) -> list[ProxyPool]:
        return self._run(
            "listing pools",
            lambda conn, _: [
                pool_from_row(row) for row in conn.execute(admin.all_pools())
            ],
            read_only=True,
        )

    def list_proxies(self, pool_name: str) -> list[Proxy]:
        return self._run(
            "listing proxies",
            lambda conn, _: [
                proxy_from_row(row)
                for row in conn.execute(
                    admin.proxies_of_pool(), {"pool_name": pool_name}
                )
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
                admin.upsert_consumer(self.dialect_name),
                {"id": uuid4(), "name": consumer_name},
            ).scalar_one(),
        )
        self._consumer_ids[consumer_name] = consumer_id
        return consumer_id

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        row = self._run(
            "reading pool stats",
            lambda conn, _: conn.execute(
                admin.pool_stats(), {"pool_name": pool_name}
            ).first(),
            read_only=True,
        )
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
        row = self._run(
            "finding a proxy",
            lambda conn, _: conn.execute(statement, params).first(),
            read_only=True,
        )
        return proxy_from_row(row) if row is not None else None

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

    def _lease_parameters(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> dict[str, Any]:
        """create_lease's parameters, with the new lease's id (a retry finds it
        by it); a bad duration raises before any I/O."""
        seconds = check_lease_seconds(duration_seconds)
        return {
            "proxy_id": proxy.id,
            "lease_id": uuid4(),
            "consumer_id": self.ensure_consumer(consumer_name),
            "seconds": seconds,
        }

    def _lease_by_id(self, conn: Connection, params: dict[str, Any]) -> Lease | None:
        """The lease an earlier try of this call took, when its reply was lost."""
        row = conn.execute(expiry.lease_with_proxy(), params).first()
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

    def _storage_error(self, action: str, exc: BaseException) -> StorageError:
        """``exc`` (SQLAlchemy's or the driver's) as a StorageError naming where."""
        source = exc.orig if isinstance(exc, DBAPIError) else exc
        reason = sql_errors.reason(source)
        if sql_errors.unreachable(source):
            host = self._url.host or "localhost"
            port = self._url.port or 5432
            return StorageError(
                f"cannot reach the database at {host}:{port} ({self._shown_url}) "
                f"while {action}: {reason}"
            )
        return StorageError(f"{action} failed on {self._shown_url}: {reason}")

    def _connection(
        self, transaction: bool, read_only: bool
    ) -> AbstractContextManager[Connection]:
        """A connection for one step (see each dialect)."""
        raise NotImplementedError

    def _transient(self, exc: DBAPIError) -> bool:
        """Whether another try of the step may succeed."""
        return bool(exc.connection_invalidated)


# -- helpers -----------------------------------------------------------------------


def adapter_for(url: str | URL) -> type[SqlStorage]:
    """The SqlStorage class of the URL's dialect."""
    if _sql_url(url).get_backend_name() == "postgresql":
        from .postgresql import PostgresStorage

        return PostgresStorage
    from .sqlite import SqliteStorage

    return SqliteStorage


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


def _unavailable(proxy: Proxy, *, known: bool) -> ProxyUnavailableError:
    if not known:
        return ProxyUnavailableError(f"proxy {proxy.id} is not in storage")
    return ProxyUnavailableError(f"proxy {proxy.id} has no free slot")
