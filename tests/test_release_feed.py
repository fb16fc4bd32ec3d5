"""PostgreSQL's release feed, and the fleet wake-up over it: notices of every
release, and a lost connection that costs nothing but a pause."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from conftest import libpq_url

from loop_support import run_on_a_loop
from scrapy_pharox import InMemoryStorage, ProxyManager, StorageError, open_storage
from scrapy_pharox.fleet_wakeup import FleetWakeup
from scrapy_pharox.models import (
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Paced,
    Proxy,
    ProxyPool,
    ProxyStatus,
)
from scrapy_pharox.storage.postgresql import PostgresStorage

pytestmark = pytest.mark.postgres

#: The feed connections of these tests only: the application name is theirs
#: (``feed_url``); other listeners on the server are left alone.
LISTENERS = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE query = 'LISTEN pharox_release' AND application_name = %s"
)


@pytest.fixture
def feed_url(postgresql_url: str) -> str:
    """The test's PostgreSQL URL, its connections named for this test."""
    separator = "&" if "?" in postgresql_url else "?"
    return f"{postgresql_url}{separator}application_name={application_name()}"


@functools.cache
def application_name() -> str:
    return f"pharox-feed-test-{uuid.uuid4().hex[:12]}"


def listeners(url: str) -> list[int]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(LISTENERS, (application_name(),)).fetchall()
        return [row[0] for row in rows]


def end_listeners(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            f"SELECT pg_terminate_backend(pid) FROM ({LISTENERS}) AS l",
            (application_name(),),
        )


def pool_with_one_proxy(storage: PostgresStorage, name: str = "default") -> None:
    pool = storage.add_pool(ProxyPool(name=name))
    storage.add_proxy(
        Proxy.from_url("http://127.0.0.1:3128", pool_id=pool.id, max_concurrency=1)
    )


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.02)


def test_every_release_is_told_with_its_pool_and_only_to_its_schema(
    feed_url: str,
) -> None:
    storage = open_storage(feed_url)
    assert isinstance(storage, PostgresStorage)
    pool_with_one_proxy(storage)
    manager = ProxyManager(storage)

    async def scenario() -> list[str]:
        feed = storage.release_feed()
        await feed.open()
        try:
            for _ in range(2):
                lease = manager.acquire_proxy("default", "crawler", 60)
                assert lease is not None
                assert await manager.release_proxy_async(lease)
            assert not manager.release_proxy(lease)  # released: nothing told
            return [await asyncio.wait_for(feed.next_release(), 10) for _ in range(2)]
        finally:
            await feed.close()
            await feed.close()

    try:
        assert run_on_a_loop(scenario()) == ["default", "default"]
    finally:
        storage.close()
    assert InMemoryStorage().release_feed() is None


def test_a_lost_feed_connection_raises_a_storage_error(feed_url: str) -> None:
    storage = open_storage(feed_url)

    async def scenario() -> None:
        feed = storage.release_feed()
        assert feed is not None
        await feed.open()
        try:
            await asyncio.to_thread(end_listeners, feed_url)
            with pytest.raises(StorageError):
                await asyncio.wait_for(feed.next_release(), 10)
        finally:
            await feed.close()

    try:
        run_on_a_loop(scenario())
    finally:
        storage.close()


def test_the_fleet_wakeup_listens_again_after_a_lost_connection_and_stops_cleanly(
    feed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scrapy_pharox.fleet_wakeup.FIRST_RETRY_SECONDS", 0.05)
    storage = open_storage(feed_url)
    assert isinstance(storage, PostgresStorage)
    pool_with_one_proxy(storage)
    manager = ProxyManager(storage)
    heard: list[str] = []

    async def release_one() -> None:
        lease = manager.acquire_proxy("default", "crawler", 60)
        assert lease is not None
        assert await manager.release_proxy_async(lease)

    async def scenario() -> None:
        fleet = FleetWakeup(storage, heard.append)
        fleet.start()
        await until(lambda: fleet.live)
        await release_one()
        await until(lambda: heard == ["default"])
        await asyncio.to_thread(end_listeners, feed_url)
        await until(lambda: not fleet.live)
        await until(lambda: fleet.live)  # listening again, on a new connection
        await release_one()
        await until(lambda: heard == ["default", "default"])
        await fleet.stop()
        assert not fleet.live
        assert asyncio.all_tasks() == {asyncio.current_task()}

    try:
        run_on_a_loop(scenario())
        assert listeners(feed_url) == []  # the feed's connection is closed
    finally:
        storage.close()


def pools_of_each_limit(storage: PostgresStorage) -> None:
    """Pools ``exclusive`` (one proxy, one lease at a time), ``roomy`` (one
    proxy, two at a time) and ``unlimited`` (one proxy, no limit)."""
    for name, limit in (("exclusive", 1), ("roomy", 2), ("unlimited", None)):
        pool = storage.add_pool(ProxyPool(name=name))
        storage.add_proxy(
            Proxy.from_url(
                f"http://127.0.0.1:{3128 + (limit or 0)}",
                pool_id=pool.id,
                max_concurrency=limit,
            )
        )


def leased(manager: ProxyManager, pool_name: str) -> Lease:
    lease = manager.acquire_proxy(pool_name, "crawler", 60)
    assert isinstance(lease, Lease)
    return lease


def test_only_a_release_that_takes_a_full_proxy_under_its_limit_is_told(
    feed_url: str,
) -> None:
    storage = open_storage(feed_url)
    listening = open_storage(feed_url)  # the waiters' connection, another one's
    assert isinstance(storage, PostgresStorage)
    pools_of_each_limit(storage)
    manager = ProxyManager(storage)
    success = OutcomeReport(outcome=LeaseOutcome.SUCCESS, domain="example.com")
    ban = OutcomeReport(outcome=LeaseOutcome.BAN)

    async def scenario() -> list[str]:
        feed = listening.release_feed()
        assert feed is not None
        await feed.open()
        try:
            exclusive = leased(manager, "exclusive")
            # Room was left on each proxy: nothing told, plain or reported,
            # blocking or in a round.
            assert manager.release_proxy(leased(manager, "roomy"))
            banned = leased(manager, "roomy")
            assert await manager.release_proxy_async(banned, ban)
            assert manager.release_proxy(leased(manager, "unlimited"), success)
            assert await manager.release_proxy_async(leased(manager, "unlimited"))
            storage.set_proxy_status(
                banned.proxy_id, ProxyStatus.ACTIVE, reset_cooldown=True
            )
            both = [leased(manager, "roomy"), leased(manager, "roomy")]
            assert await manager.release_proxy_async(both[0])  # full: told
            assert manager.release_proxy(both[1])  # one slot was left: not
            assert manager.release_proxy(exclusive, success)  # full: told
            heard = [await asyncio.wait_for(feed.next_release(), 10) for _ in range(2)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(feed.next_release(), 0.5)
            return heard
        finally:
            await feed.close()

    try:
        assert run_on_a_loop(scenario()) == ["roomy", "exclusive"]
    finally:
        storage.close()
        listening.close()


def test_a_waiter_on_another_connection_wakes_when_a_full_proxy_is_released(
    feed_url: str,
) -> None:
    storage = open_storage(feed_url)
    waiting = open_storage(feed_url)  # another crawl's storage
    assert isinstance(storage, PostgresStorage)
    pools_of_each_limit(storage)
    manager, waiter = ProxyManager(storage), ProxyManager(waiting)

    async def release_soon(lease: Lease) -> None:
        await asyncio.sleep(0.2)
        assert await manager.release_proxy_async(lease)

    async def scenario() -> Lease | Paced | None:
        woken = asyncio.Event()
        fleet = FleetWakeup(waiting, lambda pool_name: woken.set())
        fleet.start()
        try:
            await until(lambda: fleet.live)
            releasing = asyncio.create_task(release_soon(leased(manager, "exclusive")))
            assert await waiter.acquire_proxy_async("exclusive", "other", 60) is None
            await asyncio.wait_for(woken.wait(), 10)  # no look of its own
            await releasing
            return await waiter.acquire_proxy_async("exclusive", "other", 60)
        finally:
            await fleet.stop()

    try:
        assert isinstance(run_on_a_loop(scenario()), Lease)
    finally:
        storage.close()
        waiting.close()
