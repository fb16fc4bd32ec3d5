"""The IStorage contract, run over every adapter by the parametrized fixture."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from conftest import Wait

from scrapy_pharox import (
    InvalidLeaseError,
    IStorage,
    Lease,
    LeaseStatus,
    PoolNotFoundError,
    Proxy,
    ProxyCredentials,
    ProxyFilters,
    ProxyManager,
    ProxyPool,
    ProxyStatus,
    SelectorStrategy,
    bootstrap_pool,
    bootstrap_proxy,
)
from scrapy_pharox.storage.base import MAX_LEASE_SECONDS

BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def add_proxies(
    storage: IStorage, count: int, pool_name: str = "pool", **fields: Any
) -> list[Proxy]:
    """Add ``count`` proxies on ports 10000.. with checked_at growing by a minute."""
    pool = bootstrap_pool(storage, name=pool_name)
    return [
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=10000 + index,
            checked_at=BASE_TIME + timedelta(minutes=index),
            **fields,
        )
        for index in range(count)
    ]


def ports(leases: list[Any]) -> list[int | None]:
    return [lease.proxy.port if lease else None for lease in leases]


# -- finding and leasing ---------------------------------------------------------


def test_unknown_pool_gives_no_lease(manager: ProxyManager) -> None:
    assert manager.acquire_proxy("nowhere") is None


def test_acquired_lease_names_its_proxy_pool_and_expiry(
    manager: ProxyManager, storage: IStorage
) -> None:
    (proxy,) = add_proxies(storage, 1)
    before = datetime.now(timezone.utc)
    lease = manager.acquire_proxy("pool", duration_seconds=60)
    assert lease is not None
    assert lease.proxy_id == proxy.id
    assert lease.proxy is not None and lease.proxy.url == proxy.url
    assert lease.pool_name == "pool" and lease.pool_id == proxy.pool_id
    assert lease.status is LeaseStatus.ACTIVE
    assert timedelta(seconds=55) < lease.expires_at - before < timedelta(seconds=65)


def test_a_lease_and_its_proxy_carry_every_field_of_their_models(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(
        storage, 1, credentials=ProxyCredentials(user="user", password="secret")
    )
    lease = manager.acquire_proxy("pool", duration_seconds=60)
    assert lease is not None and lease.proxy is not None
    assert set(lease.__dict__) == set(Lease.model_fields)
    assert set(lease.proxy.__dict__) == set(Proxy.model_fields)
    assert lease.proxy.credentials is not None
    assert lease.proxy.credentials.password == "secret"
    assert Lease.model_validate(lease.model_dump()) == lease


def test_default_and_named_consumers_are_registered_on_first_use(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 2)
    default_lease = manager.acquire_proxy("pool")
    named_lease = manager.acquire_proxy("pool", consumer_name="crawler-7")
    assert default_lease is not None and named_lease is not None
    assert default_lease.consumer_id == storage.ensure_consumer("default")
    assert named_lease.consumer_id == storage.ensure_consumer("crawler-7")
    assert default_lease.consumer_id != named_lease.consumer_id


def test_ensure_consumer_returns_the_same_id_every_time(storage: IStorage) -> None:
    first = storage.ensure_consumer("worker")
    assert isinstance(first, UUID)
    assert storage.ensure_consumer("worker") == first


def test_inactive_slow_and_banned_proxies_are_never_leased(
    manager: ProxyManager, storage: IStorage
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    for port, status in enumerate(
        (ProxyStatus.INACTIVE, ProxyStatus.SLOW, ProxyStatus.BANNED), start=1
    ):
        bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=port, status=status)
    assert manager.acquire_proxy("pool") is None


def test_an_exclusive_proxy_is_leased_once_until_released(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    assert manager.acquire_proxy("pool") is None
    manager.release_proxy(lease)
    assert manager.acquire_proxy("pool") is not None


@pytest.mark.parametrize(
    "seconds", [MAX_LEASE_SECONDS + 1, 1e12, 1e300, float("inf"), float("nan")]
)
def test_a_lease_too_long_to_store_is_refused_before_it_takes_a_slot(
    manager: ProxyManager, storage: IStorage, seconds: float
) -> None:
    (proxy,) = add_proxies(storage, 1, max_concurrency=1)
    with pytest.raises(InvalidLeaseError, match=re.escape(repr(seconds))):
        storage.acquire("pool", "worker", seconds)
    with pytest.raises(InvalidLeaseError, match=re.escape(repr(seconds))):
        storage.create_lease(proxy, "worker", seconds)
    assert manager.acquire_proxy("pool", duration_seconds=60) is not None


def test_a_lease_of_the_longest_duration_is_stored_and_given_back(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = storage.acquire("pool", "worker", MAX_LEASE_SECONDS)
    week = timedelta(seconds=MAX_LEASE_SECONDS)
    assert lease is not None and lease.expires_at - lease.acquired_at == week
    assert manager.release_proxy(lease)
    assert manager.acquire_proxy("pool") is not None


def test_the_numbers_of_a_proxy_come_back_as_the_types_it_holds(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, latitude=52, longitude=13, asn=3320)
    lease = manager.acquire_proxy("pool")
    assert lease is not None and lease.proxy is not None
    for seen in (lease.proxy, *storage.list_proxies("pool")):
        assert (seen.latitude, seen.longitude, seen.asn) == (52.0, 13.0, 3320)
        assert type(seen.latitude) is float and type(seen.longitude) is float
        assert type(seen.asn) is int and type(seen.port) is int
        assert isinstance(seen.id, UUID) and isinstance(seen.checked_at, datetime)


# -- extending a lease -------------------------------------------------------------


def test_an_extended_lease_holds_its_slot_past_its_first_expiry(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool", duration_seconds=1)
    assert lease is not None
    first_expiry = lease.expires_at
    assert manager.extend_lease(lease, 60)
    assert lease.expires_at >= first_expiry + timedelta(seconds=58)
    wait(1.5)
    assert manager.cleanup_expired_leases() == 0
    assert manager.acquire_proxy("pool") is None
    assert manager.release_proxy(lease)
    assert manager.acquire_proxy("pool") is not None


def test_a_released_lease_is_not_extended(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool")
    assert lease is not None and manager.release_proxy(lease)
    expires_at = lease.expires_at
    assert not manager.extend_lease(lease, 60)
    assert lease.expires_at == expires_at
    stats = storage.get_pool_stats("pool")
    assert stats is not None and stats.total_leases == 0


def test_a_lease_past_its_expiry_is_not_extended_and_is_reclaimed(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool", duration_seconds=0.3)
    assert lease is not None
    wait(0.6)
    assert not manager.extend_lease(lease, 60)
    assert manager.cleanup_expired_leases() == 1
    assert manager.acquire_proxy("pool") is not None


@pytest.mark.parametrize("seconds", [0, -1, MAX_LEASE_SECONDS + 1, float("nan")])
def test_an_extension_of_a_bad_duration_is_refused_before_any_change(
    manager: ProxyManager, storage: IStorage, seconds: float
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    with pytest.raises(InvalidLeaseError, match=re.escape(repr(seconds))):
        storage.extend_lease(lease, seconds)
    with pytest.raises(InvalidLeaseError, match=re.escape(repr(seconds))):
        manager.extend_lease(lease, seconds)
    assert manager.release_proxy(lease)


def test_max_concurrency_bounds_the_leases_of_one_proxy(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, max_concurrency=3)
    leases = [manager.acquire_proxy("pool") for _ in range(4)]
    assert ports(leases) == [10000, 10000, 10000, None]
    (proxy,) = storage.list_proxies("pool")
    assert proxy.current_leases == 3


def test_a_proxy_without_max_concurrency_is_unlimited(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    leases = [manager.acquire_proxy("pool") for _ in range(50)]
    assert all(lease is not None for lease in leases)


def test_create_lease_refuses_a_proxy_that_is_full(storage: IStorage) -> None:
    (proxy,) = add_proxies(storage, 1, max_concurrency=1)
    storage.create_lease(proxy, "worker", 60)
    with pytest.raises(Exception, match="no free slot"):
        storage.create_lease(proxy, "worker", 60)


def test_find_available_proxy_then_create_lease_leases_that_proxy(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2, max_concurrency=1)
    proxy = storage.find_available_proxy("pool")
    assert proxy is not None
    lease = storage.create_lease(proxy, "worker", 60)
    assert lease.proxy_id == proxy.id
    other = storage.find_available_proxy("pool")
    assert other is not None and other.id != proxy.id


# -- selectors -------------------------------------------------------------------


def test_first_available_prefers_the_most_recently_checked_proxy(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 3, max_concurrency=1)
    leases = [manager.acquire_proxy("pool") for _ in range(3)]
    assert ports(leases) == [10002, 10001, 10000]


def test_first_available_breaks_checked_at_ties_by_proxy_id(
    manager: ProxyManager, storage: IStorage
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    proxies = [
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=port,
            checked_at=BASE_TIME,
            max_concurrency=1,
        )
        for port in (1, 2, 3, 4)
    ]
    by_id = sorted(proxies, key=lambda proxy: proxy.id)
    leases = [manager.acquire_proxy("pool") for _ in proxies]
    assert [lease.proxy_id for lease in leases if lease] == [p.id for p in by_id]


def test_first_available_returns_a_released_proxy_to_its_place(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 3, max_concurrency=1)
    first = manager.acquire_proxy("pool")
    manager.acquire_proxy("pool")
    assert first is not None
    manager.release_proxy(first)
    again = manager.acquire_proxy("pool")
    assert again is not None and again.proxy_id == first.proxy_id


def test_least_used_prefers_the_proxy_with_fewest_leases(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 3)
    picks = [
        manager.acquire_proxy("pool", selector=SelectorStrategy.LEAST_USED)
        for _ in range(6)
    ]
    # Ties go to the oldest check first, so 10000, 10001, 10002, then again.
    assert ports(picks) == [10000, 10001, 10002, 10000, 10001, 10002]


def test_least_used_counts_releases(manager: ProxyManager, storage: IStorage) -> None:
    add_proxies(storage, 2)
    first = manager.acquire_proxy("pool", selector=SelectorStrategy.LEAST_USED)
    manager.acquire_proxy("pool", selector=SelectorStrategy.LEAST_USED)
    assert first is not None
    manager.release_proxy(first)
    pick = manager.acquire_proxy("pool", selector=SelectorStrategy.LEAST_USED)
    assert pick is not None and pick.proxy_id == first.proxy_id


def test_round_robin_cycles_through_the_pool_in_id_order(
    manager: ProxyManager, storage: IStorage
) -> None:
    proxies = add_proxies(storage, 3)
    by_id = [proxy.port for proxy in sorted(proxies, key=lambda proxy: proxy.id)]
    picks = [
        manager.acquire_proxy("pool", selector=SelectorStrategy.ROUND_ROBIN)
        for _ in range(7)
    ]
    assert ports(picks) == by_id * 2 + by_id[:1]


def test_round_robin_skips_proxies_that_are_full(
    manager: ProxyManager, storage: IStorage
) -> None:
    proxies = add_proxies(storage, 3, max_concurrency=1)
    by_id = [proxy.port for proxy in sorted(proxies, key=lambda proxy: proxy.id)]
    held = manager.acquire_proxy("pool", selector=SelectorStrategy.ROUND_ROBIN)
    picks = [
        manager.acquire_proxy("pool", selector=SelectorStrategy.ROUND_ROBIN)
        for _ in range(3)
    ]
    assert held is not None and held.proxy.port == by_id[0]
    assert ports(picks) == [by_id[1], by_id[2], None]


def test_two_managers_on_one_storage_share_one_round_robin_cycle(
    storage: IStorage,
) -> None:
    proxies = add_proxies(storage, 4)
    by_id = [proxy.port for proxy in sorted(proxies, key=lambda proxy: proxy.id)]
    first, second = ProxyManager(storage), ProxyManager(storage)
    picks = [
        (first if turn % 2 else second).acquire_proxy(
            "pool", selector=SelectorStrategy.ROUND_ROBIN
        )
        for turn in range(4)
    ]
    assert ports(picks) == by_id


def test_selector_may_be_given_by_its_value(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 2)
    picks = [
        manager.acquire_proxy("pool", selector="round_robin")  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert len(set(ports(picks))) == 2


# -- releases and expiry ---------------------------------------------------------


def test_release_frees_the_slot_once(manager: ProxyManager, storage: IStorage) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    assert manager.release_proxy(lease) is True
    assert lease.status is LeaseStatus.RELEASED and lease.released_at is not None


def test_a_second_release_never_frees_another_holders_slot(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    first = manager.acquire_proxy("pool")
    assert first is not None
    manager.release_proxy(first)
    second = manager.acquire_proxy("pool")
    assert second is not None
    assert manager.release_proxy(first) is False
    assert manager.acquire_proxy("pool") is None
    assert storage.list_proxies("pool")[0].current_leases == 1


def test_expired_leases_are_reclaimed_before_the_search(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    assert manager.acquire_proxy("pool", duration_seconds=0.2) is not None
    assert manager.acquire_proxy("pool") is None
    wait(0.4)
    assert manager.acquire_proxy("pool") is not None


def test_releasing_a_reclaimed_lease_leaves_the_new_holder_alone(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1, max_concurrency=1)
    stale = manager.acquire_proxy("pool", duration_seconds=0.2)
    assert stale is not None
    wait(0.4)
    fresh = manager.acquire_proxy("pool")
    assert fresh is not None
    assert manager.release_proxy(stale) is False
    assert manager.acquire_proxy("pool") is None


def test_cleanup_counts_the_leases_it_reclaimed(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 3, max_concurrency=1)
    short = [manager.acquire_proxy("pool", duration_seconds=0.2) for _ in range(2)]
    long = manager.acquire_proxy("pool", duration_seconds=60)
    assert all(short) and long is not None
    manager.release_proxy(short[0])  # type: ignore[arg-type]
    wait(0.4)
    assert manager.cleanup_expired_leases() == 1
    assert manager.cleanup_expired_leases() == 0
    assert sum(proxy.current_leases for proxy in storage.list_proxies("pool")) == 1


# -- stats and administration ----------------------------------------------------


def test_pool_stats_count_proxies_and_leases(
    manager: ProxyManager, storage: IStorage
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    for port in (1, 2, 3):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=port, max_concurrency=2
        )
    bootstrap_proxy(
        storage, pool=pool, host="127.0.0.1", port=4, status=ProxyStatus.INACTIVE
    )
    leases = [
        manager.acquire_proxy("pool", selector=SelectorStrategy.FIRST_AVAILABLE)
        for _ in range(3)
    ]
    assert all(leases)
    stats = storage.get_pool_stats("pool")
    assert stats is not None
    assert (
        stats.total_proxies,
        stats.active_proxies,
        stats.available_proxies,
        stats.leased_proxies,
        stats.total_leases,
    ) == (4, 3, 2, 2, 3)


def test_pool_stats_of_an_unknown_pool_are_none(storage: IStorage) -> None:
    assert storage.get_pool_stats("nowhere") is None


def test_adding_a_pool_twice_returns_the_first(storage: IStorage) -> None:
    first = storage.add_pool(ProxyPool(name="pool", description="one"))
    second = storage.add_pool(ProxyPool(name="pool", description="two"))
    assert second.id == first.id and second.description == "one"
    assert [pool.name for pool in storage.list_pools()] == ["pool"]


def test_adding_the_same_proxy_endpoint_twice_keeps_one(storage: IStorage) -> None:
    pool = bootstrap_pool(storage, name="pool")
    first = Proxy.from_url("http://user:pw@127.0.0.1:3128", pool_id=pool.id)
    again = Proxy.from_url("http://user:pw@127.0.0.1:3128", pool_id=pool.id)
    assert storage.add_proxy(first).id == first.id
    assert storage.add_proxy(again).id == first.id
    assert storage.add_proxy(first).id == first.id
    assert len(storage.list_proxies("pool")) == 1


def test_adding_a_proxy_to_an_unknown_pool_fails(storage: IStorage) -> None:
    orphan = Proxy(host="127.0.0.1", port=1, pool_id=ProxyPool(name="x").id)
    with pytest.raises(PoolNotFoundError):
        storage.add_proxy(orphan)


def test_stored_proxies_keep_every_field(storage: IStorage) -> None:
    pool = bootstrap_pool(storage, name="pool")
    proxy = Proxy.from_url(
        "socks5://us%40er:p%3Ass@[::1]:1080",
        pool_id=pool.id,
        source="vendor",
        country="de",
        city="Berlin",
        latitude=52.52,
        longitude=13.405,
        isp="isp",
        asn=3320,
        max_concurrency=4,
        checked_at=BASE_TIME,
    )
    storage.add_proxy(proxy)
    (stored,) = storage.list_proxies("pool")
    assert stored == proxy
    assert stored.url == "socks5://us%40er:p%3Ass@[::1]:1080"


def test_list_proxies_of_an_unknown_pool_is_empty(storage: IStorage) -> None:
    assert storage.list_proxies("nowhere") == []


# -- filters ---------------------------------------------------------------------

CITIES = [
    # port, country, city, source, isp, asn, latitude, longitude
    (1, "DE", "Berlin", "vendor-a", "isp-a", 100, 52.52, 13.405),
    (2, "DE", "Munich", "vendor-b", "isp-b", 200, 48.137, 11.575),
    (3, "FR", "Paris", "vendor-a", "isp-a", 300, 48.857, 2.352),
    (4, "US", "New York", "vendor-b", "isp-c", 400, 40.713, -74.006),
    (5, None, None, None, None, None, None, None),
]


@pytest.fixture
def located_pool(storage: IStorage) -> IStorage:
    pool = bootstrap_pool(storage, name="pool")
    for port, country, city, source, isp, asn, lat, lon in CITIES:
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=port,
            country=country,
            city=city,
            source=source,
            isp=isp,
            asn=asn,
            latitude=lat,
            longitude=lon,
            protocol="socks5" if port == 5 else "http",
        )
    return storage


def matching_ports(storage: IStorage, filters: ProxyFilters) -> set[int]:
    """Every port a filter can lease, taken one exclusive-ish lease at a time."""
    manager = ProxyManager(storage)
    found: set[int] = set()
    leases = []
    for _ in range(len(CITIES) + 1):
        lease = manager.acquire_proxy(
            "pool", filters=filters, selector=SelectorStrategy.ROUND_ROBIN
        )
        if lease is None or lease.proxy is None or lease.proxy.port in found:
            break
        found.add(lease.proxy.port)
        leases.append(lease)
    for lease in leases:
        manager.release_proxy(lease)
    return found


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (ProxyFilters(country="DE"), {1, 2}),
        (ProxyFilters(country="de"), {1, 2}),
        (ProxyFilters(city="Paris"), {3}),
        (ProxyFilters(source="vendor-b"), {2, 4}),
        (ProxyFilters(isp="isp-a"), {1, 3}),
        (ProxyFilters(asn=400), {4}),
        (ProxyFilters(country="DE", source="vendor-a"), {1}),
        (ProxyFilters(latitude=52.52, longitude=13.405, radius_km=600), {1, 2}),
        (ProxyFilters(latitude=52.52, longitude=13.405, radius_km=1000), {1, 2, 3}),
        (ProxyFilters(latitude=48.857, longitude=2.352), {3}),
        (
            ProxyFilters(all_of=[ProxyFilters(country="DE"), ProxyFilters(asn=200)]),
            {2},
        ),
        (
            ProxyFilters(any_of=[ProxyFilters(country="FR"), ProxyFilters(asn=400)]),
            {3, 4},
        ),
        (ProxyFilters(none_of=[ProxyFilters(country="US")]), {1, 2, 3, 5}),
        (
            ProxyFilters(
                any_of=[ProxyFilters(country="DE"), ProxyFilters(country="FR")],
                none_of=[ProxyFilters(city="Munich")],
            ),
            {1, 3},
        ),
        (ProxyFilters(country="JP"), set()),
        (ProxyFilters(protocol="socks5"), {5}),
        (
            ProxyFilters(
                any_of=[ProxyFilters(protocol="http"), ProxyFilters(protocol="https")]
            ),
            {1, 2, 3, 4},
        ),
    ],
    ids=lambda value: str(value) if isinstance(value, set) else None,
)
def test_filters_select_the_matching_proxies(
    located_pool: IStorage, filters: ProxyFilters, expected: set[int]
) -> None:
    assert matching_ports(located_pool, filters) == expected


@pytest.mark.parametrize("selector", list(SelectorStrategy))
def test_every_selector_honours_filters(
    located_pool: IStorage, selector: SelectorStrategy
) -> None:
    lease = ProxyManager(located_pool).acquire_proxy(
        "pool", filters=ProxyFilters(city="Paris"), selector=selector
    )
    assert lease is not None and lease.proxy is not None and lease.proxy.port == 3
