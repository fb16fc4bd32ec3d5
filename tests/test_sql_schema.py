"""Creating the SQL schema: idempotent, safe from many processes, versioned."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import pytest
from conftest import process_context, sql_engine
from sqlalchemy import select, text, update

from scrapy_pharox import (
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)
from scrapy_pharox.models import gateway_identities
from scrapy_pharox.storage.sql_schema import (
    SCHEMA_VERSION,
    schema_version_table,
)


def stored_versions(url: str) -> list[int]:
    with sql_engine(url) as engine, engine.connect() as conn:
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
        assert stored_versions(sql_url) == [SCHEMA_VERSION]
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
        assert stored_versions(sql_url) == [SCHEMA_VERSION]
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("version", "advice"),
    [(1, "point it at another database"), (99, "upgrade scrapy-pharox")],
)
def test_a_schema_of_another_version_is_refused_and_left_as_it_is(
    sql_url: str, version: int, advice: str
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        bootstrap_pool(storage, name="pool")
        with sql_engine(sql_url) as engine, engine.begin() as conn:
            conn.execute(update(schema_version_table).values(version=version))
        with pytest.raises(
            StorageError,
            match=rf"schema version {version},.* uses version {SCHEMA_VERSION}: "
            f"{advice}",
        ):
            open_storage(sql_url)
        assert stored_versions(sql_url) == [version]
        assert [pool.name for pool in storage.list_pools()] == ["pool"]
    finally:
        storage.close()


VERSION_5_FOREIGN_KEYS = (
    ("pharox_proxy", "pool_id", "pharox_pool"),
    ("pharox_session", "pool_id", "pharox_pool"),
    ("pharox_session", "proxy_id", "pharox_proxy"),
    ("pharox_source", "pool_id", "pharox_pool"),
)
GATEWAY_COLUMNS = ("identity", "session_id", "session_seconds", "session_started_at")


def downgrade(url: str, version: int) -> None:
    """Take what the versions after ``version`` added out of the database at
    ``url``, and say it is of that version."""
    with sql_engine(url) as engine, engine.begin() as conn:
        if version < 6 and conn.dialect.name == "postgresql":
            for table, column, parent in VERSION_5_FOREIGN_KEYS:
                conn.execute(
                    text(f"ALTER TABLE {table} ADD FOREIGN KEY ({column})"
                         f" REFERENCES {parent} (id)")
                )  # fmt: skip
        if version < 5:
            conn.execute(text("DROP INDEX pharox_proxy_endpoint"))
            for column in GATEWAY_COLUMNS:
                conn.execute(text(f"ALTER TABLE pharox_proxy DROP COLUMN {column}"))
            conn.execute(
                text(
                    "CREATE UNIQUE INDEX pharox_proxy_endpoint ON pharox_proxy"
                    " (pool_id, protocol, host_key, port, coalesce(username, ''))"
                )
            )
        if version < 4:
            conn.execute(text("DROP TABLE pharox_session"))
            conn.execute(text("DROP TABLE pharox_source"))
        if version < 3:
            conn.execute(
                text("ALTER TABLE pharox_domain_cooldown DROP COLUMN leased_at")
            )
        conn.execute(update(schema_version_table).values(version=version))


def test_a_version_2_schema_is_upgraded_in_place_keeping_its_data(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        bootstrap_pool(storage, name="pool")
        downgrade(sql_url, 2)
        open_storage(sql_url).close()
        assert stored_versions(sql_url) == [SCHEMA_VERSION] == [6]
        assert [pool.name for pool in storage.list_pools()] == ["pool"]
        with sql_engine(sql_url) as engine, engine.connect() as conn:
            conn.execute(text("SELECT leased_at FROM pharox_domain_cooldown"))
            conn.execute(text("SELECT cookies FROM pharox_session"))
    finally:
        storage.close()


def test_a_version_3_schema_is_upgraded_in_place_and_then_keeps_sessions_and_lists(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128)
        downgrade(sql_url, 3)
        with pytest.raises(StorageError, match="pharox_session"):
            storage.list_sessions("pool")
        open_storage(sql_url).close()
        assert stored_versions(sql_url) == [6]
        assert [proxy.port for proxy in storage.list_proxies("pool")] == [3128]
        binding = storage.bind_session("pool", "login", "worker", 60, 3000)
        assert binding is not None and binding.event == "created"
        assert [session.key for session in storage.list_sessions("pool")] == ["login"]
        # and live lists (pharox_source, also version 4)
        assert storage.claim_refresh("pool", "crawl-a", 60)
    finally:
        storage.close()


def test_a_version_4_schema_is_upgraded_in_place_and_then_holds_gateway_exits(
    sql_url: str,
) -> None:
    storage = open_storage(sql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128)
        downgrade(sql_url, 4)
        with pytest.raises(StorageError, match="identity"):
            storage.list_proxies("pool")
        open_storage(sql_url).close()
        assert stored_versions(sql_url) == [6]
        [kept] = storage.list_proxies("pool")
        assert (kept.port, kept.identity) == (3128, None)
        # Two exits that differ by password only: the new endpoint index
        # tells them apart by identity.
        added = [
            storage.add_proxy(proxy)
            for proxy in gateway_identities(
                "http://user:pw-{session}@127.0.0.1:7000", 2, pool_id=pool.id
            )
        ]
        assert len({proxy.id for proxy in added}) == 2
        assert len(storage.list_proxies("pool")) == 3
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


def test_a_sql_storage_is_the_adapter_of_its_url_s_dialect(sql_url: str) -> None:
    from scrapy_pharox.storage.postgresql import PostgresStorage
    from scrapy_pharox.storage.sqlite import SqliteStorage

    expected = PostgresStorage if sql_url.startswith("postgresql") else SqliteStorage
    for storage in (SqlStorage(sql_url), open_storage(sql_url)):
        try:
            assert type(storage) is expected and isinstance(storage, SqlStorage)
            assert repr(storage).startswith(f"{expected.__name__}(")
        finally:
            storage.close()


@pytest.mark.postgres
def test_the_proxy_table_leaves_room_on_its_pages_for_hot_updates(
    postgresql_url: str,
) -> None:
    open_storage(postgresql_url).close()
    with sql_engine(postgresql_url) as engine, engine.connect() as conn:
        options = conn.execute(
            text(
                "SELECT reloptions FROM pg_class"
                " WHERE oid = to_regclass('pharox_proxy')"
            )
        ).scalar_one()
    assert options == ["fillfactor=70"]


def foreign_keys(url: str) -> list[str]:
    """The foreign keys of the schema the storage at ``url`` uses."""
    with sql_engine(url) as engine, engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT conname FROM pg_constraint WHERE contype = 'f'"
                    " AND connamespace = current_schema()::regnamespace"
                )
            ).scalars()
        )


@pytest.mark.postgres
def test_no_table_has_a_foreign_key_whose_check_would_cost_every_second_update(
    postgresql_url: str,
) -> None:
    open_storage(postgresql_url).close()
    assert foreign_keys(postgresql_url) == []
    assert stored_versions(postgresql_url) == [SCHEMA_VERSION]  # the tables exist


@pytest.mark.postgres
def test_a_version_5_schema_is_upgraded_in_place_dropping_its_foreign_keys(
    postgresql_url: str,
) -> None:
    storage = open_storage(postgresql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128)
        assert storage.bind_session("pool", "login", "worker", 60, 3000) is not None
        downgrade(postgresql_url, 5)
        with sql_engine(postgresql_url) as engine, engine.begin() as conn:
            conn.execute(  # one set up by hand, under a name of its own
                text(
                    'ALTER TABLE pharox_proxy ADD CONSTRAINT "Hand Made"'
                    " FOREIGN KEY (pool_id) REFERENCES pharox_pool (id)"
                )
            )
        assert len(foreign_keys(postgresql_url)) == len(VERSION_5_FOREIGN_KEYS) + 1
        open_storage(postgresql_url).close()
        assert stored_versions(postgresql_url) == [6]
        assert foreign_keys(postgresql_url) == []
        assert [proxy.port for proxy in storage.list_proxies("pool")] == [3128]
        assert [session.key for session in storage.list_sessions("pool")] == ["login"]
    finally:
        storage.close()
