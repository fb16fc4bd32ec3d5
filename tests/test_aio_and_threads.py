"""Async helpers, and many threads against one storage."""

from __future__ import annotations

import threading
import time

import pytest

from loop_support import run_on_a_loop
from scrapy_pharox import (
    InMemoryStorage,
    ProxyManager,
    acquire_proxy_async,
    acquire_proxy_with_retry_async,
    bootstrap_pool,
    bootstrap_proxy,
    release_proxy_async,
    with_lease_async,
    with_retrying_lease_async,
)


@pytest.fixture
def manager() -> ProxyManager:
    storage = InMemoryStorage()
    pool = bootstrap_pool(storage, name="pool")
    bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128, max_concurrency=1)
    return ProxyManager(storage)


def test_async_acquire_and_release_round_trip(manager: ProxyManager) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        lease = await acquire_proxy_async(manager, "pool", "async-worker")
        assert lease is not None
        busy = await acquire_proxy_async(manager, "pool") is None
        released = await release_proxy_async(manager, lease)
        free = await acquire_proxy_async(manager, "pool") is not None
        return busy, released, free

    assert run_on_a_loop(scenario()) == (True, True, True)


def test_async_retry_uses_the_given_sleep(manager: ProxyManager) -> None:
    manager.acquire_proxy("pool")
    waits: list[float] = []
    lease = run_on_a_loop(
        acquire_proxy_with_retry_async(
            manager,
            "pool",
            max_attempts=3,
            backoff_seconds=0.1,
            sleep_fn=waits.append,
        )
    )
    assert lease is None and waits == [0.1, 0.2]


def test_with_lease_async_releases_when_the_block_raises(
    manager: ProxyManager,
) -> None:
    async def scenario() -> None:
        async with with_lease_async(manager, "pool") as lease:
            assert lease is not None
            raise KeyError("boom")

    with pytest.raises(KeyError):
        run_on_a_loop(scenario())
    assert manager.acquire_proxy("pool") is not None


def test_with_retrying_lease_async_releases_on_exit(manager: ProxyManager) -> None:
    async def scenario() -> bool:
        async with with_retrying_lease_async(manager, "pool", max_attempts=1) as lease:
            assert lease is not None
            return manager.acquire_proxy("pool") is None

    assert run_on_a_loop(scenario()) is True
    assert manager.acquire_proxy("pool") is not None


def test_many_threads_never_hold_one_exclusive_proxy_together(
    manager: ProxyManager,
) -> None:
    holders = 0
    most_holders = 0
    leases_taken = 0
    errors: list[BaseException] = []
    guard = threading.Lock()
    deadline = time.monotonic() + 1.0

    def work() -> None:
        nonlocal holders, most_holders, leases_taken
        try:
            while time.monotonic() < deadline:
                lease = manager.acquire_proxy("pool")
                if lease is None:
                    continue
                with guard:
                    holders += 1
                    most_holders = max(most_holders, holders)
                    leases_taken += 1
                time.sleep(0.0005)
                with guard:
                    holders -= 1
                manager.release_proxy(lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert most_holders == 1
    assert leases_taken > 10
    stats = manager.storage.get_pool_stats("pool")
    assert stats is not None and stats.total_leases == 0
