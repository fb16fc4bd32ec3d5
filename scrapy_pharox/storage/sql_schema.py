"""The tables of the SQL adapter, its schema version, and how time is stored.

Active leases live in ``pharox_lease`` and nowhere else: a released or reclaimed
lease moves to ``pharox_lease_history`` in the statement that ends it, so the
table every acquire touches holds one row per held slot, however long the history
grows. The history is an append-only log without indexes; add the ones you query
it by.

A database of an earlier schema version is upgraded in place (``_UPGRADES``),
one of a later version refused, never changed: version 2 is the first one
scrapy-pharox released; version 3 added ``pharox_domain_cooldown.leased_at``
(reuse delays); version 4 added ``pharox_session`` (sessions) and
``pharox_source`` (live lists); version 5 added gateway exits to
``pharox_proxy``; version 6 dropped the foreign keys.

The tables have no foreign keys (an SQLite database of an earlier version
keeps its REFERENCES clauses, which SQLite checks only with ``PRAGMA
foreign_keys`` on; the adapter never sets it). Only this adapter's statements
write the tables, and it deletes no pool and no proxy (``add_proxy`` checks its
pool first). A key check is a query of its own: PostgreSQL runs one for every
second update of a row in one transaction (the row's version is then its own),
which is every acquire and release of a round that leases one proxy twice, a
sixteenth of the server's instructions per lease
(``benchmarks/bench_pg_server.py``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..exceptions import StorageError
from .sql_query import Prepared, Query, Steps

SCHEMA_VERSION = 6

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` in PostgreSQL, integer µs in SQLite.

    SQLite has no time type; whole microseconds since the epoch keep full
    precision and compare as numbers. A naive datetime is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if dialect.name == "sqlite":
            return (value - _EPOCH) // _MICROSECOND
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return _EPOCH + timedelta(microseconds=value)
        result: datetime = value.astimezone(timezone.utc)
        return result


metadata = MetaData()

schema_version_table = Table(
    "pharox_schema_version",
    metadata,
    Column("id", Integer, primary_key=True),  # one row, id 1
    Column("version", Integer, nullable=False),
)

pool_table = Table(
    "pharox_pool",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("description", Text),
    # The proxy ROUND_ROBIN handed out last: the next pick starts after it.
    Column("round_robin_cursor", Uuid),
)

proxy_table = Table(
    "pharox_proxy",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("pool_id", Uuid, nullable=False),
    Column("protocol", String, nullable=False),
    Column("host", String, nullable=False),
    # The host lower-cased, for the endpoint identity (Proxy.endpoint_key).
    Column("host_key", String, nullable=False),
    Column("port", Integer, nullable=False),
    Column("username", Text),
    Column("password", Text),
    Column("status", String, nullable=False),
    Column("checked_at", UtcDateTime, nullable=False),
    Column("source", Text),
    Column("country", String),
    Column("city", Text),
    Column("latitude", Double),
    Column("longitude", Double),
    Column("isp", Text),
    Column("asn", BigInteger),
    Column("max_concurrency", Integer),
    Column("current_leases", Integer, nullable=False, server_default="0"),
    # What reported outcomes built up.
    Column("successes", Integer, nullable=False, server_default="0"),
    Column("bans", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("consecutive_bans", Integer, nullable=False, server_default="0"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("latency_ms", Double),
    # Not leased before this moment (database time); NULL: never cooled.
    Column("cooldown_until", UtcDateTime),
    # A gateway's exit (NULLs for other proxies): models.Proxy says what each is.
    Column("identity", Text),
    Column("session_id", String),
    Column("session_seconds", Double),
    Column("session_started_at", UtcDateTime),
)
# Room on each page so the counter updates of acquire and release stay HOT (no
# index holds current_leases, the outcome counters or cooldown_until, so they
# never touch an index). Set after CREATE TABLE: SQLAlchemy 2.0 (the one Python
# 3.10 gets) has no postgresql_with.
_PROXY_FILLFACTOR = text("ALTER TABLE pharox_proxy SET (fillfactor = 70)")

_ACTIVE_ONLY = text("status = 'active'")

# One row per endpoint of a pool; add_proxy relies on it when two processes add
# the same proxy at once. A gateway's exits share host, port and (with the
# session id in the password) user: their identity tells them apart, and stays
# when a renewal changes the user.
endpoint_index = Index(
    "pharox_proxy_endpoint",
    proxy_table.c.pool_id,
    proxy_table.c.protocol,
    proxy_table.c.host_key,
    proxy_table.c.port,
    func.coalesce(proxy_table.c.identity, proxy_table.c.username, ""),
    unique=True,
)
# FIRST_AVAILABLE walks this in order and stops at the first free, unlocked row.
Index(
    "pharox_proxy_first_available",
    proxy_table.c.pool_id,
    proxy_table.c.checked_at.desc(),
    proxy_table.c.id,
    postgresql_where=_ACTIVE_ONLY,
    sqlite_where=_ACTIVE_ONLY,
)
# ROUND_ROBIN walks this from the pool's cursor.
Index(
    "pharox_proxy_round_robin",
    proxy_table.c.pool_id,
    proxy_table.c.id,
    postgresql_where=_ACTIVE_ONLY,
    sqlite_where=_ACTIVE_ONLY,
)

consumer_table = Table(
    "pharox_consumer",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String, nullable=False, unique=True),
)

# Only the leases that hold a slot now.
lease_table = Table(
    "pharox_lease",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("proxy_id", Uuid, nullable=False),
    Column("pool_id", Uuid, nullable=False),
    Column("consumer_id", Uuid, nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)
# Finds the expired leases from the oldest expiry, without a scan.
Index("pharox_lease_expiry", lease_table.c.expires_at)

# What a proxy did with one target domain: its rest there (a ban reported with
# a domain, a Retry-After) and when it was leased for it last (an acquire with a
# reuse delay). Rows stay after the rest: consecutive_bans is where the next
# ban's strikes start.
domain_cooldown_table = Table(
    "pharox_domain_cooldown",
    metadata,
    Column("proxy_id", Uuid, primary_key=True),
    Column("domain", String, primary_key=True),
    Column("consecutive_bans", Integer, nullable=False),
    Column("cooldown_until", UtcDateTime),
    # Version 3. Not in an index: stamping it on each paced lease stays HOT.
    Column("leased_at", UtcDateTime),
)
# The eligibility check of an acquire for a domain: the cooldowns of that
# domain still running, found from the domain (the primary key serves the
# other direction, one probe per candidate proxy).
Index(
    "pharox_domain_cooldown_until",
    domain_cooldown_table.c.domain,
    domain_cooldown_table.c.cooldown_until,
)

lease_history_table = Table(
    "pharox_lease_history",
    metadata,
    Column("id", Uuid, nullable=False),
    Column("proxy_id", Uuid, nullable=False),
    Column("pool_id", Uuid, nullable=False),
    Column("consumer_id", Uuid, nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("released_at", UtcDateTime, nullable=False),
    # "released" by its holder or "expired" and reclaimed.
    Column("outcome", String, nullable=False),
)

# Version 4. One row per session of a pool: its proxy and generation, the lease
# holding its slot (NULL while parked) and its cookies as JSON text. The row
# outlives the lease; every write is a compare and set on generation (and
# lease), so no row lock is held between statements.
session_table = Table(
    "pharox_session",
    metadata,
    Column("pool_id", Uuid, primary_key=True),
    # Listed in code point order, as in memory: PostgreSQL's "C" collation.
    Column(
        "key",
        String().with_variant(String(collation="C"), "postgresql"),
        primary_key=True,
    ),
    Column("generation", Integer, nullable=False),
    Column("proxy_id", Uuid, nullable=False),
    Column("lease_id", Uuid),
    Column("consumer_id", Uuid),
    Column("lease_expires_at", UtcDateTime),
    Column("uses", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_used_at", UtcDateTime, nullable=False),
    Column("cookies", Text, nullable=False),
)

# Version 4. One row per pool that follows a live list: who refreshes it until
# when (a claim by the database's clock, so one fleet member refreshes at a
# time), and what the list did, as JSON arrays of proxy ids: the proxies it
# names and those it took out (the only ones it may put back).
source_table = Table(
    "pharox_source",
    metadata,
    Column("pool_id", Uuid, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("claimed_until", UtcDateTime, nullable=False),
    Column("listed", Text, nullable=False),
    Column("withdrawn", Text, nullable=False),
)


def create_schema(dialect: Dialect, shown_url: str) -> Steps[None]:
    """Create the tables once and record the version, in the caller's transaction.

    Safe from many processes at once: PostgreSQL takes a transaction-scoped
    advisory lock per schema first, SQLite runs in an immediate transaction. An
    existing schema of another version is left untouched and raises
    StorageError.
    """
    if dialect.name == "postgresql":
        yield _query(_SCHEMA_LOCK, dialect)
    found = yield from _stored_version(dialect)
    while found is not None and found in _UPGRADES:
        for statement in _UPGRADES[found](dialect):
            yield _query(statement, dialect)
        found += 1
        yield _query(
            schema_version_table.update()
            .where(schema_version_table.c.id == 1)
            .values(version=found),
            dialect,
        )
    if found is not None and found != SCHEMA_VERSION:
        advice = (
            "upgrade scrapy-pharox, or point it at another database (or schema)"
            if found > SCHEMA_VERSION
            else "point it at another database (or schema)"
        )
        raise StorageError(
            f"the database at {shown_url} holds scrapy-pharox schema version "
            f"{found}, but this scrapy-pharox uses version {SCHEMA_VERSION}: "
            f"{advice}"
        )
    if found is None:
        for table in metadata.sorted_tables:
            yield _query(CreateTable(table), dialect)
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                yield _query(CreateIndex(index), dialect)
        if dialect.name == "postgresql":
            yield _query(_PROXY_FILLFACTOR, dialect)
        yield _query(
            schema_version_table.insert().values(id=1, version=SCHEMA_VERSION),
            dialect,
        )


def _add_leased_at(dialect: Dialect) -> list[Any]:
    column = domain_cooldown_table.c.leased_at
    column_type = column.type.compile(dialect=dialect)
    table = domain_cooldown_table.name
    return [text(f"ALTER TABLE {table} ADD COLUMN leased_at {column_type}")]


def _add_sessions(dialect: Dialect) -> list[Any]:
    return [CreateTable(session_table), CreateTable(source_table)]


def _add_identities(dialect: Dialect) -> list[Any]:
    added = [
        text(f"ALTER TABLE pharox_proxy ADD COLUMN {column.name} "
             f"{column.type.compile(dialect=dialect)}")
        for column in proxy_table.c
        if column.name in ("identity", "session_id", "session_seconds",
                           "session_started_at")
    ]  # fmt: skip
    dropped = text("DROP INDEX pharox_proxy_endpoint")
    return [*added, dropped, CreateIndex(endpoint_index)]


# Every foreign key of the adapter's tables, whatever its name (version 5's
# were PostgreSQL's defaults, but a database may have been set up by hand).
_DROP_FOREIGN_KEYS = text(
    """DO $drop$
DECLARE
  found record;
BEGIN
  FOR found IN
    SELECT conrelid::regclass AS table_name, conname
    FROM pg_constraint
    WHERE contype = 'f'
      AND conrelid IN (to_regclass('pharox_proxy'), to_regclass('pharox_session'),
                       to_regclass('pharox_source'))
  LOOP
    EXECUTE 'ALTER TABLE ' || found.table_name
      || ' DROP CONSTRAINT ' || quote_ident(found.conname);
  END LOOP;
END
$drop$"""
)


def _drop_foreign_keys(dialect: Dialect) -> list[Any]:
    # SQLite checks foreign keys only with PRAGMA foreign_keys on, which the
    # adapter never sets, and drops one only by copying its table: its upgrade
    # is the version number alone.
    return [_DROP_FOREIGN_KEYS] if dialect.name == "postgresql" else []


#: The statements that take a schema from a version to the next, by version.
_UPGRADES = {
    2: _add_leased_at,
    3: _add_sessions,
    4: _add_identities,
    5: _drop_foreign_keys,
}

_SCHEMA_LOCK = text(
    "SELECT pg_advisory_xact_lock("
    "hashtext('scrapy_pharox.schema:' || current_schema()))"
)

# Whether the version table exists where the connection looks for tables.
_VERSION_TABLE_EXISTS = {
    "postgresql": text("SELECT to_regclass('pharox_schema_version') IS NOT NULL"),
    "sqlite": text(
        "SELECT count(*) > 0 FROM sqlite_master"
        " WHERE type = 'table' AND name = 'pharox_schema_version'"
    ),
}


def _stored_version(dialect: Dialect) -> Steps[int | None]:
    exists = yield _query(_VERSION_TABLE_EXISTS[dialect.name], dialect)
    if not exists[0]:
        return None
    row = yield _query(
        select(schema_version_table.c.version).where(schema_version_table.c.id == 1),
        dialect,
    )
    return None if row is None else int(row.version)


def _query(statement: Any, dialect: Dialect) -> Query:
    return Query(Prepared(statement, dialect), {})
