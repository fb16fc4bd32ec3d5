"""SQLite's release feed: a commit by another connection to the file, told."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from loop_support import run_on_a_loop
from scrapy_pharox import ProxyManager, SqlStorage, open_storage
from scrapy_pharox.models import Proxy, ProxyPool


def test_a_sqlite_file_feed_tells_a_release_made_by_another_connection(
    sqlite_url: str,
) -> None:
    storage = open_storage(sqlite_url)
    other = open_storage(sqlite_url)  # another process's, say
    pool = storage.add_pool(ProxyPool(name="default"))
    storage.add_proxy(
        Proxy.from_url("http://127.0.0.1:3128", pool_id=pool.id, max_concurrency=1)
    )
    manager = ProxyManager(other)

    async def scenario() -> str | None:
        feed = storage.release_feed()
        assert feed is not None
        await feed.open()
        try:
            lease = manager.acquire_proxy("default", "crawler", 60)
            assert lease is not None
            await asyncio.wait_for(feed.next_release(), 5)  # the acquire's commit
            assert manager.release_proxy(lease)
            return await asyncio.wait_for(feed.next_release(), 5)
        finally:
            await feed.close()
            await feed.close()

    try:
        assert run_on_a_loop(scenario()) is None  # some pool's: it cannot tell
    finally:
        storage.close()
        other.close()
    assert open_storage("sqlite://").release_feed() is None


def test_a_sqlite_feed_never_waits_for_a_lock_on_the_event_loop(
    tmp_path: Path,
) -> None:
    # A file in rollback-journal mode, another connection holding it exclusively:
    # a read there waits for the lock (a WAL file, as the storage makes, never).
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    feed = SqlStorage(f"sqlite:///{path}").release_feed()
    assert feed is not None

    async def scenario() -> float:
        await feed.open()
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        try:
            with pytest.raises(asyncio.TimeoutError):  # nothing told, no error
                await asyncio.wait_for(feed.next_release(), 0.3)
            return time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            await feed.close()

    try:
        assert run_on_a_loop(scenario()) < 1.0  # not the default 5 s busy wait
    finally:
        holder.close()
