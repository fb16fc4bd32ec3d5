"""A keeper's renewals of gateway exits, built from a test crawler (no crawl):
on the failure that reaches the policy's count, on a ban (or the exit cools down
when the storage cannot renew it), and before a request in an exit's last
tenth, unless another request is on it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox import (
    InMemoryStorage,
    LeaseOutcome,
    Proxy,
    ProxyPool,
    StorageError,
)
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.models import gateway_identities

URL = "http://127.0.0.1:8000/page"
GATEWAY = "http://cust-{session}:pw@127.0.0.1:7000"


def keeper_on(storage: InMemoryStorage, **settings: Any) -> LeaseKeeper:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_STORAGE": lambda: storage,
            "PHAROX_ACQUIRE_TIMEOUT": 0,
            **settings,
        }
    )
    return LeaseKeeper.for_crawler(crawler)


def add_exit(
    storage: InMemoryStorage, *, started_ago: float = 0.0, **fields: Any
) -> Proxy:
    pool = storage.add_pool(ProxyPool(name="default"))
    started = datetime.now(timezone.utc) - timedelta(seconds=started_ago)
    [exit_] = gateway_identities(
        GATEWAY, 1, pool_id=pool.id, session_seconds=100, now=started, **fields
    )
    return storage.add_proxy(exit_)


def stored(storage: InMemoryStorage) -> Proxy:
    [proxy] = storage.list_proxies("default")
    return proxy


def lease_and_release(keeper: LeaseKeeper, outcome: LeaseOutcome) -> UUID:
    async def scenario() -> UUID:
        request = Request(URL)
        lease = await keeper.lease_for(request)
        await keeper.release(lease, "response", keeper.report(request, outcome))
        return lease.proxy_id

    return run_on_a_loop(scenario())


@pytest.fixture
def storage() -> Iterator[InMemoryStorage]:
    store = InMemoryStorage()
    yield store
    store.close()


def test_an_exit_is_renewed_by_the_failure_that_reaches_the_policy_s_count(
    storage: InMemoryStorage,
) -> None:
    first = add_exit(storage, max_concurrency=1)
    keeper = keeper_on(storage, PHAROX_FAILURES_BEFORE_COOLDOWN=2)
    try:
        lease_and_release(keeper, LeaseOutcome.FAILURE)
        assert stored(storage).session_id == first.session_id
        assert stored(storage).consecutive_failures == 1
        lease_and_release(keeper, LeaseOutcome.FAILURE)
    finally:
        keeper.shutdown()
    renewed = stored(storage)
    assert renewed.session_id != first.session_id
    assert (renewed.failures, renewed.cooldown_until) == (0, None)
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/identity/renewed/failure") == 1
    assert keeper.stats.get_value("pharox/outcome/failure") == 2


class CannotRenew(InMemoryStorage):
    def renew_identity(self, *args: Any, **kwargs: Any) -> Proxy:
        raise StorageError("the store is down")


def test_an_exit_the_storage_cannot_renew_cools_down_as_any_banned_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = CannotRenew()
    first = add_exit(storage, max_concurrency=1)
    keeper = keeper_on(storage)
    try:
        lease_and_release(keeper, LeaseOutcome.BAN)
    finally:
        keeper.shutdown()
    cooled = stored(storage)
    assert cooled.session_id == first.session_id
    assert cooled.cooldown_until is not None and cooled.bans == 1
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/identity/error") == 1
    assert "could not renew gateway exit" in caplog.text
    assert "the store is down" in caplog.text


def test_a_lease_on_an_exit_in_its_last_tenth_goes_out_on_a_renewed_exit(
    storage: InMemoryStorage,
) -> None:
    first = add_exit(storage, started_ago=95, max_concurrency=1)
    keeper = keeper_on(storage)

    async def scenario() -> Any:
        lease = await keeper.lease_for(Request(URL))
        held = keeper.holds(lease) and keeper._held[lease.id.int]
        await keeper.release(lease, "response")
        return lease, held

    try:
        lease, held = run_on_a_loop(scenario())
    finally:
        keeper.shutdown()
    renewed = stored(storage)
    assert renewed.session_id != first.session_id
    assert lease.proxy.session_id == renewed.session_id
    assert lease.proxy.url == f"http://cust-{renewed.session_id}:pw@127.0.0.1:7000"
    assert held == lease  # the keeper holds the lease as it goes out
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/identity/renewed/expiry") == 1


def test_an_exit_in_its_last_tenth_is_not_renewed_under_another_request(
    storage: InMemoryStorage,
) -> None:
    first = add_exit(storage, started_ago=95, max_concurrency=2)
    other = storage.acquire("default", "another-crawl", 30)
    assert other is not None
    keeper = keeper_on(storage)
    try:
        proxy_id = lease_and_release(keeper, LeaseOutcome.SUCCESS)
    finally:
        keeper.shutdown()
    assert proxy_id == first.id
    assert stored(storage).session_id == first.session_id
    keeper.flush_stats()
    assert keeper.stats.get_value("pharox/identity/renewed") is None


def test_an_exit_well_inside_its_session_is_leased_as_it_is(
    storage: InMemoryStorage,
) -> None:
    first = add_exit(storage, started_ago=50, max_concurrency=1)
    keeper = keeper_on(storage)
    try:
        lease_and_release(keeper, LeaseOutcome.SUCCESS)
    finally:
        keeper.shutdown()
    assert stored(storage).session_id == first.session_id
