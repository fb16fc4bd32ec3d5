"""LeaseKeeper, built from a test crawler (no crawl): reports, background releases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox import (
    InMemoryStorage,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    StorageError,
)
from scrapy_pharox.bridge import Wakeup
from scrapy_pharox.keeper import LeaseKeeper


@pytest.fixture
def keeper() -> Iterator[LeaseKeeper]:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_BAN_SCOPE": "domain",
        }
    )
    keeper = LeaseKeeper.for_crawler(crawler)
    yield keeper
    keeper.shutdown()


def test_a_report_carries_outcome_latency_domain_policy_and_a_draw(
    keeper: LeaseKeeper,
) -> None:
    request = Request("http://127.0.0.1:8000/page")
    report = keeper.report(request, LeaseOutcome.BAN, 12.5)
    assert (report.outcome, report.latency_ms, report.domain) == (
        LeaseOutcome.BAN,
        12.5,
        "127.0.0.1",
    )
    assert report.policy == keeper.config.cooldown
    assert 0 <= report.draw <= 1
    assert OutcomeReport.model_validate(report.model_dump()) == report


def test_a_negative_download_latency_is_reported_as_zero(keeper: LeaseKeeper) -> None:
    report = keeper.report(
        Request("http://127.0.0.1:8000/"), LeaseOutcome.SUCCESS, -3.0
    )
    assert report.latency_ms == 0.0


class ReleaseFailsOnTheLoop(InMemoryStorage):
    """An adapter that awaits its releases on the loop, and fails them (a bug)."""

    @property
    def native_async(self) -> bool:
        return True

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        raise RuntimeError("a bug in the adapter")


def test_a_release_failing_in_the_background_is_counted_and_close_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_STORAGE": ReleaseFailsOnTheLoop,
        }
    )
    keeper = LeaseKeeper.for_crawler(crawler)
    hooks_run: list[str] = []

    async def hook() -> None:
        hooks_run.append("snapshot")

    keeper.add_close_hook(hook)

    async def scenario() -> None:
        lease = await keeper.lease_for(Request("http://127.0.0.1:8000/"))
        assert await keeper.release(lease, "response")
        await keeper.spider_closed(Spider(name="closing"))

    try:
        run_on_a_loop(scenario())
    finally:
        keeper.shutdown()
    assert hooks_run == ["snapshot"]
    assert keeper.stats.get_value("pharox/release/error") == 1
    assert keeper.stats.get_value("pharox/release/response") == 1
    assert "could not release a lease" in caplog.text


class FailsInline(InMemoryStorage):
    """Memory storage (called inline by the keeper) whose database is 'down'."""

    def __init__(self, *, fail_acquire: bool) -> None:
        super().__init__()
        self.fail_acquire = fail_acquire

    def acquire(self, *args: Any, **kwargs: Any) -> Lease | None:
        if self.fail_acquire:
            raise StorageError("the store is down")
        return super().acquire(*args, **kwargs)

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        raise StorageError("the store is down")


def inline_keeper(storage: InMemoryStorage) -> LeaseKeeper:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_STORAGE": lambda: storage,
            "PHAROX_ACQUIRE_TIMEOUT": 0,
        }
    )
    return LeaseKeeper.for_crawler(crawler)


def test_an_inline_acquire_that_fails_is_counted_and_the_request_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper = inline_keeper(FailsInline(fail_acquire=True))
    try:
        with pytest.raises(IgnoreRequest):
            run_on_a_loop(keeper.lease_for(Request("http://127.0.0.1:8000/")))
    finally:
        keeper.shutdown()
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/acquire/error") == 1
    assert keeper.stats.get_value("pharox/acquire/gave_up") == 1
    assert "could not acquire a proxy: the store is down" in caplog.text


def test_an_inline_release_that_fails_is_counted_and_the_lease_let_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper = inline_keeper(FailsInline(fail_acquire=False))

    async def scenario() -> bool:
        lease = await keeper.lease_for(Request("http://127.0.0.1:8000/"))
        return await keeper.release(lease, "response")

    try:
        released = run_on_a_loop(scenario())
    finally:
        keeper.shutdown()
    assert released
    assert keeper.active == 0
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/release/error") == 1
    assert keeper.stats.get_value("pharox/release/response") == 1
    assert "could not release a lease: the store is down" in caplog.text


class RefusesReleasesSlowly(InMemoryStorage):
    """A far-away database that is down for releases: 0.3 s, then an error."""

    blocking_io = True

    def __init__(self) -> None:
        super().__init__()
        self.release_tries: list[float] = []

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        self.release_tries.append(time.monotonic())
        time.sleep(0.3)
        raise StorageError("the store is down")


def test_a_release_retry_out_at_close_is_the_last_one() -> None:
    storage = RefusesReleasesSlowly()
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_STORAGE": lambda: storage,
        }
    )
    keeper = LeaseKeeper.for_crawler(crawler)

    async def scenario() -> None:
        lease = await keeper.lease_for(Request("http://127.0.0.1:8000/"))
        await keeper.release(lease, "response")  # refused; tried again at 0.5 s
        await asyncio.sleep(0.5 + 0.15)  # the second try is out now
        await keeper.spider_closed(Spider(name="closing"))
        await asyncio.sleep(2.5)  # a third would have come 1 s after the second

    try:
        run_on_a_loop(scenario())
    finally:
        keeper.shutdown()
    assert len(storage.release_tries) == 2


def test_a_freed_proxy_goes_to_the_longest_waiter_not_to_a_newcomer(
    keeper: LeaseKeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No recheck comes during the test: only releases hand the proxy on.
    monkeypatch.setattr("scrapy_pharox.keeper.FIRST_RECHECK_SECONDS", 30.0)
    served: list[str] = []

    async def fetch(name: str) -> None:
        lease = await keeper.lease_for(Request(f"http://127.0.0.1:8000/{name}"))
        served.append(name)
        await asyncio.sleep(0)
        await keeper.release(lease, "response")

    async def scenario() -> None:
        held = await keeper.lease_for(Request("http://127.0.0.1:8000/"))
        waiting = [asyncio.create_task(fetch("first"))]
        await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(fetch("second")))
        await asyncio.sleep(0.01)
        assert keeper.waiting == 2
        # A request that comes as the proxy is freed waits behind them.
        waiting.append(asyncio.create_task(fetch("newcomer")))
        await keeper.release(held, "response")
        await asyncio.wait_for(asyncio.gather(*waiting), 10)

    run_on_a_loop(scenario())
    assert served == ["first", "second", "newcomer"]


def test_waiters_are_woken_by_when_they_began_to_wait() -> None:
    async def scenario() -> list[str]:
        wakeup, woken = Wakeup(), []

        async def sleep(name: str, since: float) -> None:
            if await wakeup.sleep(name, 10, since) is not None:
                woken.append(name)

        # "early" began to wait first, but its latest sleep began last.
        sleeps = [
            asyncio.create_task(sleep("late", 2.0)),
            asyncio.create_task(sleep("early", 1.0)),
        ]
        await asyncio.sleep(0)
        wakeup.wake_one(set())
        await asyncio.sleep(0)
        wakeup.wake_one(set())
        await asyncio.gather(*sleeps)
        return woken

    assert run_on_a_loop(scenario()) == ["early", "late"]
