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
from scrapy_pharox.models import Proxy, ProxyPool
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
