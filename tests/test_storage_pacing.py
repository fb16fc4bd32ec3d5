"""Sharing a proxy over time, in the IStorage contract: reuse delays per domain
and the rests of throttled outcomes (Retry-After).

Run over every adapter by the parametrized ``storage`` fixture.
"""

from __future__ import annotations

import math

import pytest
from conftest import Wait

from scrapy_pharox import (
    CooldownPolicy,
    InvalidArgumentError,
    IStorage,
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Paced,
    Proxy,
    ProxyFilters,
    ProxyManager,
    bootstrap_pool,
    bootstrap_proxy,
)

#: Jitter-free cooldowns: 0.3 s for a ban, at most 1 s for anything.
QUICK = CooldownPolicy(base_seconds=0.3, max_seconds=1.0, jitter=0.0)
SHOP = "shop.example"
NEWS = "news.example"


def add_proxies(storage: IStorage, count: int, **fields: object) -> list[Proxy]:
    """``count`` exclusive proxies (max_concurrency 1) in pool "pool"."""
    fields.setdefault("max_concurrency", 1)
    pool = bootstrap_pool(storage, name="pool")
    return [
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=10000 + index, **fields
        )
        for index in range(count)
    ]


def lease_for(
    manager: ProxyManager, domain: str, reuse_delay: float = 0.5, **options: object
) -> Lease | Paced | None:
    return manager.acquire_proxy(
        "pool",
        duration_seconds=60,
        domain=domain,
        reuse_delay=reuse_delay,
        **options,  # type: ignore[arg-type]
    )


def used_once(manager: ProxyManager, domain: str, reuse_delay: float = 0.5) -> Lease:
    """A lease for ``domain`` with a reuse delay, given back at once."""
    lease = lease_for(manager, domain, reuse_delay)
    assert isinstance(lease, Lease), lease
    assert manager.release_proxy(lease)
    return lease


def throttled(**fields: object) -> OutcomeReport:
    return OutcomeReport(
        outcome=LeaseOutcome.THROTTLED,
        policy=QUICK,
        draw=0.5,
        **fields,  # type: ignore[arg-type]
    )


# -- reuse delay -----------------------------------------------------------------


def test_a_proxy_leased_for_a_domain_is_passed_over_there_within_the_delay(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 2)
    first = used_once(manager, SHOP)
    second = used_once(manager, SHOP)
    assert second.proxy_id != first.proxy_id


def test_a_pool_whose_free_proxies_are_all_paced_answers_paced_with_the_wait(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    used_once(manager, SHOP, reuse_delay=0.5)
    paced = lease_for(manager, SHOP, reuse_delay=0.5)
    assert isinstance(paced, Paced) and not paced
    assert 0.0 < paced.seconds <= 0.5


def test_a_paced_proxy_is_leased_again_once_its_delay_has_passed(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    (proxy,) = add_proxies(storage, 1)
    used_once(manager, SHOP, reuse_delay=0.4)
    wait(0.5)
    again = lease_for(manager, SHOP, reuse_delay=0.4)
    assert isinstance(again, Lease) and again.proxy_id == proxy.id


def test_a_proxy_paced_for_one_domain_is_leased_for_another(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    used_once(manager, SHOP)
    assert isinstance(lease_for(manager, NEWS), Lease)


def test_an_acquire_without_a_reuse_delay_is_not_held_back_by_one(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    used_once(manager, SHOP)
    assert isinstance(lease_for(manager, SHOP, reuse_delay=0), Lease)


def test_a_shorter_delay_of_another_request_is_measured_from_the_same_lease(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    used_once(manager, SHOP, reuse_delay=5)
    wait(0.3)
    assert isinstance(lease_for(manager, SHOP, reuse_delay=5), Paced)
    assert isinstance(lease_for(manager, SHOP, reuse_delay=0.2), Lease)


def test_a_pool_with_no_free_proxy_is_a_plain_miss_not_paced(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    held = lease_for(manager, SHOP)
    assert isinstance(held, Lease)
    assert lease_for(manager, NEWS) is None


def test_a_paced_miss_counts_only_proxies_the_filters_match(
    manager: ProxyManager, storage: IStorage
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    for port, country in ((1, "DE"), (2, "US")):
        bootstrap_proxy(
            storage,
            pool=pool,
            host="127.0.0.1",
            port=port,
            country=country,
            max_concurrency=1,
        )
    german = ProxyFilters(country="DE")
    lease = lease_for(manager, SHOP, filters=german)
    assert isinstance(lease, Lease) and manager.release_proxy(lease)
    us_held = lease_for(manager, SHOP, filters=ProxyFilters(country="US"))
    assert isinstance(us_held, Lease)
    # The German proxy is free but paced; the American one is busy.
    assert isinstance(lease_for(manager, SHOP, filters=german), Paced)
    assert manager.release_proxy(us_held)
    assert isinstance(lease_for(manager, NEWS, filters=german), Lease)


def test_a_domain_rest_holds_a_proxy_back_even_past_its_reuse_delay(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    lease = lease_for(manager, SHOP, reuse_delay=0.01)
    assert isinstance(lease, Lease)
    manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=30))
    # Resting, not paced: no wait to tell.
    assert lease_for(manager, SHOP, reuse_delay=0.01) is None


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e12, "1"])
def test_a_bad_reuse_delay_is_refused_naming_it_before_any_lease(
    manager: ProxyManager, storage: IStorage, bad: object
) -> None:
    add_proxies(storage, 1)
    with pytest.raises(InvalidArgumentError, match="reuse_delay"):
        lease_for(manager, SHOP, reuse_delay=bad)  # type: ignore[arg-type]
    assert storage.get_pool_stats("pool").total_leases == 0  # type: ignore[union-attr]


# -- throttled outcomes: rests, not bans -------------------------------------------


def test_a_throttled_proxy_rests_for_its_domain_only(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    lease = manager.acquire_proxy("pool", domain=SHOP)
    assert lease is not None
    manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=0.5))
    assert manager.acquire_proxy("pool", domain=SHOP) is None
    other = manager.acquire_proxy("pool", domain=NEWS)
    assert other is not None and manager.release_proxy(other)
    wait(0.6)
    assert manager.acquire_proxy("pool", domain=SHOP) is not None


def test_a_throttle_counts_neither_a_ban_nor_a_failure(
    manager: ProxyManager, storage: IStorage
) -> None:
    add_proxies(storage, 1)
    lease = manager.acquire_proxy("pool", domain=SHOP)
    assert lease is not None
    manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=0.1))
    (proxy,) = storage.list_proxies("pool")
    assert (proxy.bans, proxy.failures, proxy.consecutive_bans) == (0, 0, 0)
    assert proxy.cooldown_until is None
    (rest,) = storage.list_domain_cooldowns("pool")
    assert (rest.domain, rest.consecutive_bans) == (SHOP, 0)


def test_a_throttle_rest_is_capped_by_the_policy_max(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    lease = manager.acquire_proxy("pool", domain=SHOP)
    assert lease is not None
    manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=3600))
    wait(1.1)  # QUICK.max_seconds is 1
    assert manager.acquire_proxy("pool", domain=SHOP) is not None


def test_a_shorter_throttle_never_cuts_a_longer_rest(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    for seconds in (0.8, 0.1):
        lease = manager.acquire_proxy("pool", domain=NEWS)
        assert lease is not None
        manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=seconds))
    wait(0.3)
    assert manager.acquire_proxy("pool", domain=SHOP) is None


def test_a_throttle_without_a_domain_rests_the_whole_proxy(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    manager.release_proxy(lease, throttled(rest_seconds=0.5))
    assert manager.acquire_proxy("pool", domain=NEWS) is None
    (proxy,) = storage.list_proxies("pool")
    assert proxy.consecutive_bans == 0 and proxy.cooldown_until is not None
    wait(0.6)
    assert manager.acquire_proxy("pool") is not None


def test_a_throttle_keeps_the_ban_streak_of_its_domain(
    manager: ProxyManager, storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    ban = OutcomeReport(outcome=LeaseOutcome.BAN, policy=QUICK, draw=0.5, domain=SHOP)
    lease = manager.acquire_proxy("pool", domain=NEWS)
    assert lease is not None
    manager.release_proxy(lease, ban)
    lease = manager.acquire_proxy("pool", domain=NEWS)
    assert lease is not None
    manager.release_proxy(lease, throttled(domain=SHOP, rest_seconds=0.1))
    (rest,) = storage.list_domain_cooldowns("pool")
    assert rest.consecutive_bans == 1
