"""The live-list part of the storage contract, over every adapter: one claim
per pool at a time (expiring by the storage's clock, renewed by its holder),
the list state saved with it and fenced by it, and the sync of a pool with a
list: new proxies join, gone ones stop being leased with their counters kept,
and only the proxies the list took out come back."""

from __future__ import annotations

import pytest
from conftest import Wait
from test_storage_session_primitives import AdapterBeforeSessions

from scrapy_pharox import (
    InvalidArgumentError,
    IStorage,
    LeaseOutcome,
    OutcomeReport,
    PoolNotFoundError,
    Proxy,
    ProxyPool,
    ProxyStatus,
)
from scrapy_pharox.storage import SourceState

POOL = "listed"


def listed(*ports: int, password: str | None = None) -> list[Proxy]:
    """The proxies of a list, not yet in a pool."""
    pool = ProxyPool(name=POOL)
    auth = f"user:{password}@" if password else ""
    return [
        Proxy.from_url(
            f"http://{auth}10.0.0.{port % 250}:{port}",
            pool_id=pool.id,
            max_concurrency=1,
        )
        for port in ports
    ]


def statuses(storage: IStorage) -> dict[int, ProxyStatus]:
    return {proxy.port: proxy.status for proxy in storage.list_proxies(POOL)}


def leased_ports(storage: IStorage) -> set[int]:
    """Every port an acquire reaches now (each proxy takes one lease at a time;
    every lease is given back)."""
    leases = []
    while (lease := storage.acquire(POOL, "worker", 30)) is not None:
        leases.append(lease)
    for lease in leases:
        storage.release_lease(lease)
    return {lease.proxy.port for lease in leases}


def test_one_holder_claims_a_pool_at_a_time_until_its_claim_expires(
    storage: IStorage, wait: Wait
) -> None:
    storage.add_pool(ProxyPool(name=POOL))
    assert storage.claim_refresh(POOL, "crawl-a", 2)
    assert not storage.claim_refresh(POOL, "crawl-b", 2)
    assert storage.claim_refresh(POOL, "crawl-a", 2)  # renewed by its holder
    wait(2.5)
    assert storage.claim_refresh(POOL, "crawl-b", 2)  # expired: another takes it
    assert not storage.claim_refresh(POOL, "crawl-a", 2)


def test_a_claim_of_an_unknown_pool_or_with_bad_arguments_is_refused(
    storage: IStorage,
) -> None:
    with pytest.raises(PoolNotFoundError, match="nowhere"):
        storage.claim_refresh("nowhere", "crawl-a", 10)
    storage.add_pool(ProxyPool(name=POOL))
    with pytest.raises(InvalidArgumentError, match="seconds"):
        storage.claim_refresh(POOL, "crawl-a", 0)
    with pytest.raises(InvalidArgumentError, match="holder"):
        storage.claim_refresh(POOL, "", 10)


def test_the_state_is_saved_with_the_claim_and_only_by_its_holder(
    storage: IStorage, wait: Wait
) -> None:
    storage.add_pool(ProxyPool(name=POOL))
    assert storage.get_source_state(POOL) == SourceState()
    proxies = [storage.add_proxy(p) for p in _in_pool(storage, listed(1, 2))]
    state = SourceState(frozenset({proxies[0].id}), frozenset({proxies[1].id}))
    assert not storage.put_source_state(POOL, "crawl-a", state)  # no claim yet
    assert storage.claim_refresh(POOL, "crawl-a", 1)
    assert storage.put_source_state(POOL, "crawl-a", state)
    assert not storage.put_source_state(POOL, "crawl-b", SourceState())
    wait(1.5)
    # Another process that refreshes next knows what the list did.
    assert storage.claim_refresh(POOL, "crawl-b", 1)
    assert storage.get_source_state(POOL) == state
    assert not storage.put_source_state(POOL, "crawl-a", SourceState())
    assert storage.get_source_state(POOL) == state


def _in_pool(storage: IStorage, proxies: list[Proxy]) -> list[Proxy]:
    pool = storage.add_pool(ProxyPool(name=POOL))
    return [proxy.model_copy(update={"pool_id": pool.id}) for proxy in proxies]


def test_a_sync_adds_new_proxies_and_takes_out_gone_ones_keeping_their_counters(
    storage: IStorage,
) -> None:
    storage.add_pool(ProxyPool(name=POOL))
    assert storage.claim_refresh(POOL, "crawl-a", 30)
    first = storage.sync_source(POOL, "crawl-a", listed(1, 2, 3))
    assert sorted(p.port for p in first.added) == [1, 2, 3]
    assert first.removed == first.returned == []
    assert first.saved
    lease = storage.acquire(POOL, "worker", 30)
    assert lease is not None
    taken = lease.proxy.port
    # The list drops the proxy whose lease is out: the lease finishes normally.
    second = storage.sync_source(POOL, "crawl-a", listed(*{1, 2, 3, 4} - {taken}))
    assert storage.release_lease(lease, OutcomeReport(outcome=LeaseOutcome.SUCCESS))
    assert [p.port for p in second.added] == [4]
    assert [p.port for p in second.removed] == [taken]
    assert statuses(storage)[taken] is ProxyStatus.INACTIVE
    assert taken not in leased_ports(storage)
    # It comes back: leased again, with its history.
    returned = storage.sync_source(POOL, "crawl-a", listed(1, 2, 3, 4))
    assert [p.port for p in returned.returned] == [taken]
    assert returned.added == []
    (back,) = [p for p in storage.list_proxies(POOL) if p.port == taken]
    assert back.status is ProxyStatus.ACTIVE
    assert back.successes == 1
    assert leased_ports(storage) == {1, 2, 3, 4}


def test_a_sync_puts_back_only_what_the_list_took_out(storage: IStorage) -> None:
    storage.add_pool(ProxyPool(name=POOL))
    assert storage.claim_refresh(POOL, "crawl-a", 30)
    storage.sync_source(POOL, "crawl-a", listed(1, 2))
    # Someone sets proxy 1 INACTIVE by hand (scrapy pharox-set), then the list
    # drops it and names it again: it stays out.
    (one,) = [p for p in storage.list_proxies(POOL) if p.port == 1]
    storage.set_proxy_status(one.id, ProxyStatus.INACTIVE)
    assert storage.sync_source(POOL, "crawl-a", listed(2)).removed == []
    assert storage.sync_source(POOL, "crawl-a", listed(1, 2)).returned == []
    assert statuses(storage) == {1: ProxyStatus.INACTIVE, 2: ProxyStatus.ACTIVE}
    # A proxy the list did not put in (PHAROX_PROXIES, an import) is not its own.
    (other,) = _in_pool(storage, listed(9))
    storage.add_proxy(other)
    assert storage.sync_source(POOL, "crawl-a", listed(2)).removed == []
    assert statuses(storage)[9] is ProxyStatus.ACTIVE


def test_a_sync_by_a_holder_that_lost_its_claim_is_not_saved(
    storage: IStorage, wait: Wait
) -> None:
    storage.add_pool(ProxyPool(name=POOL))
    assert storage.claim_refresh(POOL, "crawl-a", 1)
    storage.sync_source(POOL, "crawl-a", listed(1))
    wait(1.5)
    assert storage.claim_refresh(POOL, "crawl-b", 30)
    late = storage.sync_source(POOL, "crawl-a", listed(1, 2))
    assert not late.saved
    assert len(storage.get_source_state(POOL).listed) == 1


def test_an_adapter_written_before_live_lists_says_it_has_none() -> None:
    adapter = AdapterBeforeSessions()  # type: ignore[abstract]
    for call in (
        lambda: adapter.claim_refresh(POOL, "crawl-a", 10),
        lambda: adapter.get_source_state(POOL),
        lambda: adapter.put_source_state(POOL, "crawl-a", SourceState()),
    ):
        with pytest.raises(
            InvalidArgumentError, match="AdapterBeforeSessions has no live lists"
        ):
            call()
