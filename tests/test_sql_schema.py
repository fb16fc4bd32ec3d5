"""Creating the SQL schema: idempotent, safe from many processes, versioned."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import pytest
from conftest import process_context
from sqlalchemy import select, text, update

from scrapy_pharox import (
    CooldownPolicy,
    LeaseOutcome,
    OutcomeReport,
    ProxyManager,
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)
from scrapy_pharox.storage.sql_schema import (
    SCHEMA_VERSION,
    domain_cooldown_table,
    proxy_table,
    schema_version_table,
)

# What version 2 added to version 1: dropping them makes a version 1 database.
VERSION_2_PROXY_COLUMNS = [
    "successes",
    "bans",
    "failures",
    "consecutive_bans",
    "consecutive_failures",
    "latency_ms",
    "cooldown_until",
]


def stored_versions(storage: SqlStorage) -> list[int]:
    with storage.engine.connect() as conn:
        return list(conn.execute(select(schema_version_table.c.version)).scalars())


def open_at(url: str, start_at: float, out: str) -> None:
    """One process: open the storage (creating the schema) at the agreed moment."""
    time.sleep(max(0.0, start_at - time.time()))
    try:
        open_storage(url).close()
        Path(out).write_text(json.dumps("ok"))
    except BaseException:
        Path(out).write_text(json.dumps(traceback.format_exc()))


def test_creating_the_schema_again_keeps_the_data_and_one_version_row(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        bootstrap_pool(storage, name="pool")
        storage.create_schema()
        storage.create_schema()
        assert [pool.name for pool in storage.list_pools()] == ["pool"]
        assert stored_versions(storage) == [SCHEMA_VERSION]
    finally:
        storage.close()


def open_from_processes_at_once(url: str, tmp_path: Path, count: int) -> list[str]:
    """Open the storage from ``count`` processes in the same second; what each
    said (``open_at``)."""
    context = process_context()
    start_at = time.time() + 1.0
    outputs = [tmp_path / f"opener-{index}.json" for index in range(count)]
    processes = [
        context.Process(target=open_at, args=(url, start_at, str(out)))
        for out in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    return [json.loads(out.read_text()) for out in outputs]


def test_many_processes_can_create_the_schema_at_the_same_moment(
    sql_url: str, tmp_path: Path
) -> None:
    assert open_from_processes_at_once(sql_url, tmp_path, 6) == ["ok"] * 6
    storage = SqlStorage(sql_url)
    try:
        assert stored_versions(storage) == [SCHEMA_VERSION]
    finally:
        storage.close()


def make_version_1(storage: SqlStorage) -> None:
    """Turn the storage's schema back into version 1, data kept."""
    with storage.engine.begin() as conn:
        domain_cooldown_table.drop(conn)
        for column in VERSION_2_PROXY_COLUMNS:
            conn.execute(text(f"ALTER TABLE {proxy_table.name} DROP COLUMN {column}"))
        conn.execute(update(schema_version_table).values(version=1))


def test_a_version_1_schema_is_migrated_by_many_processes_at_once(
    sql_url: str, tmp_path: Path
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128)
        make_version_1(storage)
    finally:
        storage.close()
    assert open_from_processes_at_once(sql_url, tmp_path, 4) == ["ok"] * 4
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        assert stored_versions(storage) == [SCHEMA_VERSION]
        (proxy,) = storage.list_proxies("pool")
        assert (proxy.port, proxy.successes, proxy.cooldown_until) == (3128, 0, None)
        manager = ProxyManager(storage)
        lease = manager.acquire_proxy("pool", domain="shop.example")
        assert lease is not None
        ban = OutcomeReport(
            outcome=LeaseOutcome.BAN,
            domain="shop.example",
            policy=CooldownPolicy(base_seconds=60),
        )
        assert manager.release_proxy(lease, ban)
        assert manager.acquire_proxy("pool", domain="shop.example") is None
        assert [rest.domain for rest in storage.list_domain_cooldowns("pool")] == [
            "shop.example"
        ]
    finally:
        storage.close()


def test_a_schema_of_another_version_is_refused_and_left_as_it_is(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        bootstrap_pool(storage, name="pool")
        with storage.engine.begin() as conn:
            conn.execute(update(schema_version_table).values(version=99))
        with pytest.raises(
            StorageError,
            match=rf"schema version 99.* uses version {SCHEMA_VERSION}: upgrade",
        ):
            open_storage(sql_url)
        assert stored_versions(storage) == [99]
        assert [pool.name for pool in storage.list_pools()] == ["pool"]
    finally:
        storage.close()


def test_a_storage_used_before_its_schema_exists_raises_storage_error(
    sql_url: str,
) -> None:
    storage = SqlStorage(sql_url)
    try:
        with pytest.raises(StorageError, match="listing pools failed on"):
            storage.list_pools()
    finally:
        storage.close()
