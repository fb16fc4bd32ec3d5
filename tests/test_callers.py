"""The storage caller: chosen once per storage kind, each mode calling the storage
where it should (inline, in a worker thread, on the running loop)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox import InMemoryStorage, Lease, Proxy, ProxyManager, ProxyPool
from scrapy_pharox.callers import (
    AcquireRequest,
    InlineCaller,
    LoopCaller,
    StorageCaller,
    ThreadCaller,
)
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.models import OutcomeReport, SelectorStrategy


class BlockingMemory(InMemoryStorage):
    """Memory storage that says it blocks, recording the thread of each call."""

    blocking_io = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def acquire(self, *args: Any, **kwargs: Any) -> Lease | None:
        self.threads.append(threading.current_thread().name)
        return super().acquire(*args, **kwargs)


class LoopMemory(BlockingMemory):
    """Blocking storage that can also wait on the running loop."""

    def __init__(self) -> None:
        super().__init__()
        self.on_loop = 0

    @property
    def native_async(self) -> bool:
        return True

    async def acquire_async(self, *args: Any, **kwargs: Any) -> Lease | None:
        self.on_loop += 1
        return InMemoryStorage.acquire(self, *args, **kwargs)

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        self.on_loop += 1
        return super().release_lease(lease, report)


@pytest.mark.parametrize(
    ("storage_class", "caller_class"),
    [
        (InMemoryStorage, InlineCaller),
        (BlockingMemory, ThreadCaller),
        (LoopMemory, LoopCaller),
    ],
)
def test_the_keeper_chooses_its_caller_once_from_the_storage(
    storage_class: type[InMemoryStorage], caller_class: type[StorageCaller]
) -> None:
    storage = storage_class()
    crawler = get_crawler(settings_dict={"PHAROX_STORAGE": lambda: storage})
    keeper = LeaseKeeper.for_crawler(crawler)
    try:
        assert type(keeper.caller) is caller_class
        assert keeper.caller.inline is (caller_class is InlineCaller)
    finally:
        keeper.shutdown()


def pooled(storage: InMemoryStorage) -> tuple[ProxyManager, AcquireRequest]:
    pool = storage.add_pool(ProxyPool(name="p"))
    storage.add_proxy(Proxy(host="127.0.0.1", port=3128, pool_id=pool.id))
    request = AcquireRequest("p", "c", 30, None, SelectorStrategy.ROUND_ROBIN, None)
    return ProxyManager(storage), request


def test_the_thread_caller_acquires_in_a_worker_thread() -> None:
    storage = BlockingMemory()
    manager, request = pooled(storage)
    caller = ThreadCaller(manager)
    try:
        lease = run_on_a_loop(caller.acquire(request))
        assert lease is not None
        assert run_on_a_loop(caller.release(lease, None))
    finally:
        caller.shutdown()
    assert storage.threads[0].startswith("pharox-storage")
    assert not caller.in_background()


def test_the_loop_caller_waits_on_the_running_loop_and_releases_in_background() -> None:
    storage = LoopMemory()
    manager, request = pooled(storage)
    caller = LoopCaller(manager)

    async def scenario() -> bool:
        assert caller.in_background()
        lease = await caller.acquire(request)
        assert lease is not None
        return await caller.release(lease, None)

    try:
        assert run_on_a_loop(scenario())
    finally:
        caller.shutdown()
    assert storage.on_loop == 2
    assert storage.threads == []


def test_the_loop_caller_falls_back_to_threads_when_no_asyncio_loop_runs() -> None:
    storage = LoopMemory()
    manager, request = pooled(storage)
    caller = LoopCaller(manager)
    offloaded: list[object] = []

    async def run(func: Any, *args: Any) -> Any:  # Twisted's thread pool, faked
        offloaded.append(func)
        return func(*args)

    caller._offloader.run = run  # type: ignore[method-assign]

    def without_a_loop() -> Lease | None:
        assert not caller.in_background()
        coroutine = caller.acquire(request)
        try:
            coroutine.send(None)
        except StopIteration as done:
            lease: Lease | None = done.value
            return lease
        raise AssertionError("the fallback should not suspend")  # pragma: no cover

    worker = ThreadPoolExecutor(max_workers=1)
    try:
        lease = worker.submit(without_a_loop).result()
    finally:
        worker.shutdown()
        caller.shutdown()
    assert lease is not None
    assert storage.on_loop == 0
    assert offloaded == [caller.acquire_now]
