"""An acquire that fails once it has claimed a slot leaves that slot free, in
every adapter: the claim and the lease are one step, or nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import sql_engine
from sqlalchemy import text

from async_path import AsyncPath
from scrapy_pharox import (
    InMemoryStorage,
    IStorage,
    ProxyManager,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)

# Refuses every new lease row: an acquire fails right after its claim.
TRIGGERS = {
    "postgresql": [
        "CREATE FUNCTION pharox_refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'refused right after the claim'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON pharox_lease"
        " FOR EACH ROW EXECUTE FUNCTION pharox_refuse()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON pharox_lease"
        " BEGIN SELECT RAISE(ABORT, 'refused right after the claim'); END",
    ],
}
UNDO = {
    "postgresql": ["DROP TRIGGER refuse ON pharox_lease"],
    "sqlite": ["DROP TRIGGER refuse"],
}


def one_exclusive_proxy(storage: IStorage) -> None:
    pool = bootstrap_pool(storage, name="pool")
    bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=1, max_concurrency=1)


def run_sql(url: str, statements: list[str]) -> None:
    with sql_engine(url) as engine, engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql-async", marks=pytest.mark.postgres),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(request: pytest.FixtureRequest, kind: str) -> str:
    fixture = "sqlite_url" if kind == "sqlite" else "postgresql_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def sql_storage(kind: str, url: str) -> Iterator[IStorage]:
    """The SQL storage on ``url``; on PostgreSQL also through its async path."""
    storage = open_storage(url)
    if kind == "postgresql-async":
        storage = AsyncPath(storage)
    try:
        yield storage
    finally:
        storage.close()


def test_a_sql_acquire_refused_after_its_claim_leaves_the_slot_free(
    kind: str, url: str, sql_storage: IStorage
) -> None:
    dialect = "sqlite" if kind == "sqlite" else "postgresql"
    manager = ProxyManager(sql_storage)
    one_exclusive_proxy(sql_storage)
    manager.release_proxy(manager.acquire_proxy("pool"))  # type: ignore[arg-type]
    run_sql(url, TRIGGERS[dialect])
    with pytest.raises(StorageError, match="refused right after the claim"):
        manager.acquire_proxy("pool")
    run_sql(url, UNDO[dialect])
    (proxy,) = sql_storage.list_proxies("pool")
    assert proxy.current_leases == 0
    assert manager.acquire_proxy("pool") is not None


class BrokenClock:
    """The real time, or a moment no datetime can hold while ``broken``."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self) -> float:
        return 1e12 if self.broken else time.time()


def test_a_memory_acquire_that_fails_to_build_its_lease_leaves_the_slot_free() -> None:
    clock = BrokenClock()
    storage = InMemoryStorage(clock=clock)
    manager = ProxyManager(storage)
    one_exclusive_proxy(storage)
    clock.broken = True
    with pytest.raises(ValueError, match="out of range"):
        manager.acquire_proxy("pool")
    clock.broken = False
    (proxy,) = storage.list_proxies("pool")
    assert proxy.current_leases == 0
    assert manager.acquire_proxy("pool") is not None
