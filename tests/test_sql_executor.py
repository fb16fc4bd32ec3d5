"""The one executor of the SQL adapters: every operation's statements run on the
connections the storage opened itself, in one transaction where they must."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from conftest import sql_engine
from sqlalchemy import text

from scrapy_pharox import (
    LeaseOutcome,
    OutcomeReport,
    ProxyManager,
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)


def test_every_statement_of_a_sqlite_storage_runs_on_a_connection_its_hooks_saw(
    sqlite_url: str,
) -> None:
    statements: list[str] = []

    def trace(conn: Any) -> None:
        assert isinstance(conn, sqlite3.Connection)
        conn.set_trace_callback(statements.append)

    storage = SqlStorage(sqlite_url)
    storage.connection_hooks.append(trace)
    try:
        storage.create_schema()
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1)
        manager = ProxyManager(storage)
        warm_up = manager.acquire_proxy("pool")  # registers the consumer
        assert warm_up is not None and manager.release_proxy(warm_up)
        statements.clear()
        lease = manager.acquire_proxy("pool")
        assert lease is not None
        assert manager.release_proxy(lease)
    finally:
        storage.close()
    words = [statement.split()[0].upper() for statement in statements]
    # Two operations, each its steps in one immediate transaction.
    assert words.count("BEGIN") == 2 and words.count("COMMIT") == 2
    assert "BEGIN IMMEDIATE" in statements
    assert any("INSERT INTO pharox_lease " in s for s in statements)
    assert any("DELETE FROM pharox_lease " in s for s in statements)


def test_a_sqlite_release_whose_later_step_fails_leaves_the_lease_active(
    sqlite_url: str,
) -> None:
    storage = open_storage(sqlite_url)
    manager = ProxyManager(storage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1)
        lease = manager.acquire_proxy("pool")
        assert lease is not None
        with sql_engine(sqlite_url) as engine, engine.begin() as conn:
            conn.execute(text("DROP TABLE pharox_domain_cooldown"))
        ban = OutcomeReport(outcome=LeaseOutcome.BAN, domain="example.com")
        with pytest.raises(StorageError, match="releasing a lease failed"):
            manager.release_proxy(lease, ban)
        stats = storage.get_pool_stats("pool")
        assert stats is not None and stats.total_leases == 1  # nothing half done
    finally:
        storage.close()


def test_a_sqlite_commit_that_fails_leaves_neither_a_transaction_nor_a_lock(
    sqlite_url: str,
) -> None:
    storage = SqlStorage(sqlite_url)
    # A deferred foreign key is checked at COMMIT only: a real COMMIT that fails.
    storage.connection_hooks.append(
        lambda conn: conn.execute("PRAGMA foreign_keys = ON")
    )
    manager = ProxyManager(storage)
    try:
        storage.create_schema()
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1)
        with sql_engine(sqlite_url) as engine, engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE blocker (proxy_id CHAR(32) REFERENCES"
                    " pharox_proxy (id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER block AFTER INSERT ON pharox_lease"
                    " BEGIN INSERT INTO blocker VALUES ('nowhere'); END"
                )
            )
        with pytest.raises(StorageError, match="FOREIGN KEY constraint failed"):
            manager.acquire_proxy("pool")
        # Another connection (another process, say) can write at once ...
        with sql_engine(sqlite_url) as engine, engine.begin() as conn:
            conn.execute(text("DROP TRIGGER block"))
        # ... and this storage goes on, the failed acquire undone.
        assert manager.acquire_proxy("pool") is not None
        (proxy,) = storage.list_proxies("pool")
        assert proxy.current_leases == 1
    finally:
        storage.close()
