"""The health part of the IStorage contract: outcomes, cooldowns, status changes.

Run over every adapter by the parametrized ``storage`` fixture.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest
from conftest import Now, Wait

from scrapy_pharox import (
    CooldownPolicy,
    IStorage,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyManager,
    ProxyNotFoundError,
    ProxyStatus,
    ProxyUnavailableError,
    bootstrap_pool,
    bootstrap_proxy,
)

#: Short, jitter-free cooldowns: 0.3 s, then 0.6 s, capped at 1 s.
QUICK = CooldownPolicy(base_seconds=0.3, max_seconds=1.0, jitter=0.0)


def report(outcome: LeaseOutcome, **fields: object) -> OutcomeReport:
    return OutcomeReport(outcome=outcome, policy=QUICK, draw=0.5, **fields)  # type: ignore[arg-type]


@pytest.fixture
def one_proxy(storage: IStorage) -> Proxy:
    pool = bootstrap_pool(storage, name="pool")
    return bootstrap_proxy(storage, pool=pool, host="127.0.0.1", port=3128)


def proxy_now(storage: IStorage) -> Proxy:
    (proxy,) = storage.list_proxies("pool")
    return proxy


def use_once(manager: ProxyManager, outcome: LeaseOutcome, **fields: object) -> bool:
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    return manager.release_proxy(lease, report(outcome, **fields))


# -- counters --------------------------------------------------------------------


def test_outcomes_are_counted_on_the_proxy(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.SUCCESS, latency_ms=100)
    use_once(manager, LeaseOutcome.SUCCESS, latency_ms=200)
    use_once(manager, LeaseOutcome.FAILURE)
    proxy = proxy_now(storage)
    assert (proxy.successes, proxy.bans, proxy.failures) == (2, 0, 1)
    assert proxy.consecutive_failures == 1
    # A moving average: 100, then 0.7 * 100 + 0.3 * 200.
    assert proxy.latency_ms == pytest.approx(130)


def test_a_success_resets_the_consecutive_counters(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.FAILURE)
    use_once(manager, LeaseOutcome.FAILURE)
    use_once(manager, LeaseOutcome.SUCCESS)
    proxy = proxy_now(storage)
    assert (proxy.failures, proxy.consecutive_failures) == (2, 0)


def test_a_release_that_changed_nothing_records_nothing(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    assert manager.release_proxy(lease, report(LeaseOutcome.SUCCESS)) is True
    assert manager.release_proxy(lease, report(LeaseOutcome.BAN)) is False
    proxy = proxy_now(storage)
    assert (proxy.successes, proxy.bans, proxy.cooldown_until) == (1, 0, None)


def test_a_lease_carries_the_health_of_its_proxy(
    manager: ProxyManager, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.SUCCESS, latency_ms=80)
    lease = manager.acquire_proxy("pool")
    assert lease is not None and lease.proxy is not None
    assert (lease.proxy.successes, lease.proxy.latency_ms) == (1, 80)


def test_a_release_after_the_lease_expired_records_nothing(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, wait: Wait
) -> None:
    lease = manager.acquire_proxy("pool", duration_seconds=0.05)
    assert lease is not None
    wait(0.1)
    assert storage.cleanup_expired_leases() == 1
    assert manager.release_proxy(lease, report(LeaseOutcome.BAN)) is False
    proxy = proxy_now(storage)
    assert (proxy.bans, proxy.consecutive_bans, proxy.cooldown_until) == (0, 0, None)


# -- cooldowns -------------------------------------------------------------------


def test_a_banned_proxy_is_not_leased_until_its_cooldown_ends(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, wait: Wait, now: Now
) -> None:
    before = now()
    use_once(manager, LeaseOutcome.BAN)
    proxy = proxy_now(storage)
    assert proxy.bans == proxy.consecutive_bans == 1
    assert proxy.cooldown_until is not None
    assert timedelta(seconds=0.1) < proxy.cooldown_until - before < timedelta(seconds=1)
    assert manager.acquire_proxy("pool") is None
    wait(0.45)
    assert manager.acquire_proxy("pool") is not None


def test_consecutive_bans_double_the_cooldown_up_to_the_cap(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, wait: Wait, now: Now
) -> None:
    rests = []
    for _ in range(4):
        started = now()
        lease = manager.acquire_proxy("pool")
        while lease is None:
            wait(0.05)
            lease = manager.acquire_proxy("pool")
        started = now()
        manager.release_proxy(lease, report(LeaseOutcome.BAN))
        until = proxy_now(storage).cooldown_until
        assert until is not None
        rests.append((until - started).total_seconds())
    assert rests == pytest.approx([0.3, 0.6, 1.0, 1.0], abs=0.08)
    assert proxy_now(storage).consecutive_bans == 4


def test_failures_cool_a_proxy_only_after_the_threshold(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.FAILURE)
    use_once(manager, LeaseOutcome.FAILURE)
    assert proxy_now(storage).cooldown_until is None
    use_once(manager, LeaseOutcome.FAILURE)
    assert proxy_now(storage).cooldown_until is not None
    assert manager.acquire_proxy("pool") is None


def test_failures_with_a_domain_still_cool_the_whole_proxy(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    for _ in range(3):
        use_once(manager, LeaseOutcome.FAILURE, domain="shop.example")
    proxy = proxy_now(storage)
    assert (proxy.failures, proxy.consecutive_failures) == (3, 3)
    assert proxy.cooldown_until is not None
    assert manager.acquire_proxy("pool", domain="news.example") is None
    assert storage.list_domain_cooldowns("pool") == []


def test_a_cooling_proxy_is_neither_found_nor_leased_directly(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.BAN)
    assert storage.find_available_proxy("pool") is None
    with pytest.raises(ProxyUnavailableError):
        storage.create_lease(one_proxy, "direct", 60)


def test_cooling_proxies_are_counted_in_pool_stats(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    bootstrap_proxy(
        storage, pool=bootstrap_pool(storage, name="pool"), host="127.0.0.1", port=2
    )
    bootstrap_proxy(
        storage,
        pool=bootstrap_pool(storage, name="pool"),
        host="127.0.0.1",
        port=3,
        status=ProxyStatus.BANNED,
    )
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    manager.release_proxy(lease, report(LeaseOutcome.BAN))
    stats = storage.get_pool_stats("pool")
    assert stats is not None
    assert (
        stats.total_proxies,
        stats.active_proxies,
        stats.available_proxies,
        stats.cooling_proxies,
        stats.banned_proxies,
    ) == (3, 2, 1, 1, 1)


def test_a_domain_ban_cools_the_proxy_for_that_domain_only(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    lease = manager.acquire_proxy("pool", domain="shop.example")
    assert lease is not None
    manager.release_proxy(lease, report(LeaseOutcome.BAN, domain="shop.example"))
    assert manager.acquire_proxy("pool", domain="shop.example") is None
    other = manager.acquire_proxy("pool", domain="news.example")
    assert other is not None
    manager.release_proxy(other)
    assert manager.acquire_proxy("pool") is not None
    proxy = proxy_now(storage)
    assert (proxy.bans, proxy.consecutive_bans, proxy.cooldown_until) == (1, 0, None)
    (cooldown,) = storage.list_domain_cooldowns("pool")
    assert (cooldown.proxy_id, cooldown.domain, cooldown.consecutive_bans) == (
        one_proxy.id,
        "shop.example",
        1,
    )


def test_consecutive_domain_bans_double_that_domain_s_cooldown(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, now: Now
) -> None:
    use_once(manager, LeaseOutcome.BAN, domain="shop.example")
    started = now()
    use_once(manager, LeaseOutcome.BAN, domain="shop.example")
    (rest,) = storage.list_domain_cooldowns("pool")
    assert rest.consecutive_bans == 2 and rest.cooldown_until is not None
    assert (rest.cooldown_until - started).total_seconds() == pytest.approx(
        0.6, abs=0.08
    )
    assert storage.find_available_proxy("pool", domain="shop.example") is None
    assert storage.find_available_proxy("pool", domain="news.example") is not None


def test_a_success_for_a_domain_starts_its_strikes_again(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, wait: Wait, now: Now
) -> None:
    # Two leases out at once: the ban comes back while the other is still out.
    banned = manager.acquire_proxy("pool", domain="shop.example")
    served = manager.acquire_proxy("pool", domain="shop.example")
    assert banned is not None and served is not None
    manager.release_proxy(banned, report(LeaseOutcome.BAN, domain="shop.example"))
    manager.release_proxy(served, report(LeaseOutcome.SUCCESS, domain="shop.example"))
    (rest,) = storage.list_domain_cooldowns("pool")
    # The rest already running stays; the next ban counts from one again.
    assert rest.consecutive_bans == 0
    assert manager.acquire_proxy("pool", domain="shop.example") is None
    wait(0.45)
    started = now()
    use_once(manager, LeaseOutcome.BAN, domain="shop.example")
    (rest,) = storage.list_domain_cooldowns("pool")
    assert rest.consecutive_bans == 1 and rest.cooldown_until is not None
    assert (rest.cooldown_until - started).total_seconds() == pytest.approx(
        0.3, abs=0.08
    )


def test_a_domain_cooldown_ends_by_itself(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy, wait: Wait
) -> None:
    lease = manager.acquire_proxy("pool", domain="shop.example")
    assert lease is not None
    manager.release_proxy(lease, report(LeaseOutcome.BAN, domain="shop.example"))
    wait(0.45)
    assert manager.acquire_proxy("pool", domain="shop.example") is not None
    assert storage.list_domain_cooldowns("pool") == []


def test_a_cooldown_is_seen_by_another_manager_on_the_same_storage(
    storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(ProxyManager(storage), LeaseOutcome.BAN)
    assert ProxyManager(storage).acquire_proxy("pool") is None


# -- status ----------------------------------------------------------------------


def test_set_proxy_status_takes_a_proxy_out_and_back(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    storage.set_proxy_status(one_proxy.id, ProxyStatus.INACTIVE)
    assert manager.acquire_proxy("pool") is None
    back = storage.set_proxy_status(one_proxy.id, ProxyStatus.ACTIVE)
    assert back.status is ProxyStatus.ACTIVE
    assert manager.acquire_proxy("pool") is not None


def test_a_health_check_stamps_checked_at_and_latency(
    storage: IStorage, one_proxy: Proxy, now: Now
) -> None:
    before = now() - timedelta(seconds=1)
    checked = storage.set_proxy_status(
        one_proxy.id, ProxyStatus.SLOW, latency_ms=2500, checked=True
    )
    assert checked.status is ProxyStatus.SLOW and checked.latency_ms == 2500
    assert checked.checked_at > before
    assert proxy_now(storage).checked_at == checked.checked_at


def test_a_fresh_check_moves_a_proxy_to_the_front_of_first_available(
    manager: ProxyManager, storage: IStorage
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    first = bootstrap_proxy(
        storage, pool=pool, host="127.0.0.1", port=1, checked_at=old
    )
    bootstrap_proxy(
        storage, pool=pool, host="127.0.0.1", port=2, checked_at=old + timedelta(1)
    )
    storage.set_proxy_status(first.id, ProxyStatus.ACTIVE, checked=True)
    lease = manager.acquire_proxy("pool")
    assert lease is not None and lease.proxy_id == first.id


def test_resetting_the_cooldown_brings_a_banned_proxy_back_at_once(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.BAN)
    storage.set_proxy_status(one_proxy.id, ProxyStatus.ACTIVE, reset_cooldown=True)
    proxy = proxy_now(storage)
    assert (proxy.cooldown_until, proxy.consecutive_bans, proxy.bans) == (None, 0, 1)
    assert manager.acquire_proxy("pool") is not None


def test_resetting_the_cooldown_also_ends_its_domain_cooldowns(
    manager: ProxyManager, storage: IStorage, one_proxy: Proxy
) -> None:
    use_once(manager, LeaseOutcome.BAN, domain="shop.example")
    storage.set_proxy_status(one_proxy.id, ProxyStatus.ACTIVE, reset_cooldown=True)
    assert storage.list_domain_cooldowns("pool") == []
    assert manager.acquire_proxy("pool", domain="shop.example") is not None


def test_set_proxy_status_of_an_unknown_proxy_fails(storage: IStorage) -> None:
    with pytest.raises(ProxyNotFoundError):
        storage.set_proxy_status(uuid4(), ProxyStatus.ACTIVE)


def test_the_cooldown_policy_grows_exponentially_with_jitter() -> None:
    policy = CooldownPolicy(base_seconds=60, max_seconds=3600, jitter=0.2)
    assert [policy.seconds(n, 0.5) for n in (1, 2, 3, 7, 30)] == [
        60,
        120,
        240,
        3600,
        3600,
    ]
    assert policy.seconds(1, 0.0) == pytest.approx(48)
    assert policy.seconds(1, 1.0) == pytest.approx(72)
    assert policy.strikes(LeaseOutcome.FAILURE, 2) == 0
    assert policy.strikes(LeaseOutcome.FAILURE, 4) == 2
