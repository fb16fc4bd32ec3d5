"""The PostgreSQL rounds (sql_rounds): many coroutines' statements, one pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import libpq_url
from sqlalchemy import literal_column, select

from loop_support import run_on_a_loop
from scrapy_pharox import (
    InvalidArgumentError,
    Lease,
    ProxyFilters,
    ProxyManager,
    SelectorStrategy,
    SqlStorage,
    StorageError,
    bootstrap_pool,
    bootstrap_proxy,
)
from scrapy_pharox.storage.sql_query import Prepared, Query, Steps
from wire_support import WireTrace

pytestmark = pytest.mark.postgres


@pytest.fixture
def storage(postgresql_url: str) -> Iterator[SqlStorage]:
    storage = SqlStorage(postgresql_url)
    storage.create_schema()
    pool = bootstrap_pool(storage, name="pool")
    for port in (1, 2, 3):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=port, max_concurrency=1
        )
    try:
        yield storage
    finally:
        storage.close()


def test_coroutines_sharing_three_exclusive_proxies_never_hold_one_together(
    storage: SqlStorage,
) -> None:
    manager = ProxyManager(storage)
    holders: dict[Any, int] = {}
    most = 0

    async def worker() -> int:
        nonlocal most
        leases = 0
        for _ in range(15):
            lease = await manager.acquire_proxy_async("pool", "worker")
            if lease is None:
                await asyncio.sleep(0.001)
                continue
            holders[lease.proxy_id] = holders.get(lease.proxy_id, 0) + 1
            most = max(most, holders[lease.proxy_id])
            await asyncio.sleep(0.002)
            holders[lease.proxy_id] -= 1
            assert await manager.release_proxy_async(lease)
            leases += 1
        return leases

    async def scenario() -> list[int]:
        return await asyncio.gather(*(worker() for _ in range(12)))

    leases = run_on_a_loop(scenario())
    assert sum(leases) > 0
    assert most == 1
    stats = storage.get_pool_stats("pool")
    assert stats is not None and stats.total_leases == 0


def manager_with_wire(storage: SqlStorage) -> tuple[ProxyManager, list[Any]]:
    """A manager, and the lease lane's connections as they open (for WireTrace)."""
    opened: list[Any] = []
    storage.connection_hooks.append(opened.append)
    return ProxyManager(storage), opened


async def lease_and_give_back(manager: ProxyManager) -> None:
    lease = await manager.acquire_proxy_async("pool", "worker")
    assert lease is not None and await manager.release_proxy_async(lease)


def test_concurrent_acquires_share_round_trips(storage: SqlStorage) -> None:
    manager, opened = manager_with_wire(storage)

    async def scenario() -> int:
        await lease_and_give_back(manager)  # connected, statements prepared
        with WireTrace(opened) as wire:
            leases = await asyncio.gather(
                *(manager.acquire_proxy_async("pool", "worker") for _ in range(3))
            )
            await asyncio.gather(
                *(manager.release_proxy_async(lease) for lease in leases if lease)
            )
        assert all(leases)
        return wire.round_trips

    # Six statements: the three acquires in one round, the three releases in one.
    assert run_on_a_loop(scenario()) == 2


def test_a_statement_of_a_coroutine_the_last_round_woke_rides_the_next_round(
    storage: SqlStorage,
) -> None:
    manager, opened = manager_with_wire(storage)

    async def second() -> Any:
        for _ in range(3):  # queued while the first acquire's round is out
            await asyncio.sleep(0)
        return await manager.acquire_proxy_async("pool", "worker")

    async def scenario() -> int:
        await lease_and_give_back(manager)  # connected, statements prepared
        with WireTrace(opened) as wire:
            _, lease = await asyncio.gather(lease_and_give_back(manager), second())
        assert lease is not None and await manager.release_proxy_async(lease)
        return wire.round_trips

    # The first acquire; then the second acquire and the first release together.
    assert run_on_a_loop(scenario()) == 2


def test_a_lease_released_twice_in_one_round_is_released_once(
    storage: SqlStorage,
) -> None:
    manager = ProxyManager(storage)
    lease = manager.acquire_proxy("pool", "worker")
    assert lease is not None
    twin = lease.model_copy()

    async def scenario() -> list[bool]:
        return await asyncio.gather(
            manager.release_proxy_async(lease), manager.release_proxy_async(twin)
        )

    assert sorted(run_on_a_loop(scenario())) == [False, True]
    assert storage.list_proxies("pool")[0].current_leases == 0


def test_a_failing_statement_fails_only_the_coroutine_that_sent_it(
    storage: SqlStorage,
) -> None:
    lane = storage._executor
    assert lane is not None
    failing = Prepared(select(literal_column("1 / 0").label("value")))
    fine = Prepared(select(literal_column("7").label("value")))

    def steps(statement: Prepared) -> Steps[int]:
        row = yield Query(statement, {}, (1, ""))
        return int(row.value)

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(
                lane.run_async("testing", lambda _, s=statement: steps(s))
                for statement in (fine, failing, fine)
            ),
            return_exceptions=True,
        )

    first, second, third = run_on_a_loop(scenario())
    assert (first, third) == (7, 7)
    assert isinstance(second, StorageError)
    assert "division by zero" in str(second)


def test_coroutines_waiting_on_a_cancelled_round_are_cancelled_not_left_waiting(
    storage: SqlStorage,
) -> None:
    lane = storage._executor
    assert lane is not None
    sleeping = Prepared(select(literal_column("pg_sleep(5)").label("value")))

    def steps() -> Steps[None]:
        yield Query(sleeping, {})

    async def scenario() -> float:
        waiting = asyncio.ensure_future(lane.run_async("testing", lambda _: steps()))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        worker = lane._pipeliner._worker
        assert worker is not None
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 2)  # never left waiting
        return time.monotonic() - started

    assert run_on_a_loop(scenario()) < 1.0
    manager = ProxyManager(storage)
    assert run_on_a_loop(manager.acquire_proxy_async("pool")) is not None


def test_an_acquire_whose_coroutine_was_cancelled_gives_its_lease_back(
    storage: SqlStorage, postgresql_url: str
) -> None:
    manager = ProxyManager(storage)
    assert manager.acquire_proxy("pool", "worker") is not None  # consumer known
    storage.cleanup_expired_leases()
    holder = psycopg.connect(libpq_url(postgresql_url))
    # A round-robin acquire waits for its pool's row: hold it locked meanwhile.
    holder.execute("SELECT id FROM pharox_pool FOR UPDATE")

    async def scenario() -> None:
        acquiring = asyncio.ensure_future(
            manager.acquire_proxy_async(
                "pool", "worker", selector=SelectorStrategy.ROUND_ROBIN
            )
        )
        await asyncio.sleep(0.3)  # the acquire is out, waiting on the lock
        acquiring.cancel()
        holder.rollback()  # the acquire now goes through, for nobody
        for _ in range(100):
            await asyncio.sleep(0.02)
            if storage.get_pool_stats("pool").total_leases == 1:  # type: ignore[union-attr]
                return

    try:
        run_on_a_loop(scenario())
    finally:
        holder.close()
    stats = storage.get_pool_stats("pool")
    assert stats is not None and stats.total_leases == 1  # the first lease only


@pytest.mark.parametrize(
    "filters",
    [ProxyFilters(city="a\x00b"), ProxyFilters(isp="\ud800")],
    ids=["nul-byte", "lone-surrogate"],
)
def test_an_acquire_psycopg_cannot_send_fails_alone_and_the_next_one_works(
    storage: SqlStorage, filters: ProxyFilters
) -> None:
    manager = ProxyManager(storage)

    async def scenario() -> list[Any]:
        together = await asyncio.wait_for(  # a wedged storage never answers
            asyncio.gather(
                manager.acquire_proxy_async("pool", "worker"),
                manager.acquire_proxy_async("pool", "worker", filters=filters),
                manager.acquire_proxy_async("pool", "worker"),
                return_exceptions=True,
            ),
            20,
        )
        after = await asyncio.wait_for(manager.acquire_proxy_async("pool"), 1)
        return [*together, after]

    first, failed, third, after = run_on_a_loop(scenario())
    assert isinstance(failed, (StorageError, InvalidArgumentError))
    assert all(isinstance(lease, Lease) for lease in (first, third, after))
    assert total_leases(storage) == 3


def test_a_sync_acquire_psycopg_cannot_send_fails_and_the_next_one_works(
    storage: SqlStorage,
) -> None:
    manager = ProxyManager(storage)
    with pytest.raises(StorageError, match="NUL"):
        manager.acquire_proxy("pool", filters=ProxyFilters(city="a\x00b"))
    assert manager.acquire_proxy("pool") is not None
    assert total_leases(storage) == 1


def total_leases(storage: SqlStorage) -> int:
    stats = storage.get_pool_stats("pool")
    assert stats is not None
    return stats.total_leases


@pytest.mark.parametrize("selector", list(SelectorStrategy))
def test_an_acquire_prepared_before_a_column_joined_the_proxy_table_still_runs(
    storage: SqlStorage, postgresql_url: str, selector: SelectorStrategy
) -> None:
    # A later schema version (or an operator) may add a column while crawls
    # run: a prepared statement's result must not be "the table's columns",
    # which PostgreSQL fixes at PREPARE and then refuses to change.
    manager = ProxyManager(storage)

    async def lease_and_release() -> None:
        lease = await manager.acquire_proxy_async("pool", "worker", selector=selector)
        assert isinstance(lease, Lease)
        assert await manager.release_proxy_async(lease)

    async def scenario() -> None:
        await lease_and_release()  # the statements are prepared now
        with psycopg.connect(libpq_url(postgresql_url), autocommit=True) as conn:
            conn.execute("ALTER TABLE pharox_proxy ADD COLUMN added_later integer")
        await lease_and_release()

    run_on_a_loop(scenario())
    assert [proxy.current_leases for proxy in storage.list_proxies("pool")] == [0] * 3
