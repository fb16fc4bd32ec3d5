"""The session contract where crawls share a storage: a bind that does not
join a session another crawl uses, bans scoped to the session's domain, and
renewals that keep a lease without counting a use."""

from __future__ import annotations

from datetime import timedelta

from conftest import Wait

from scrapy_pharox import IStorage, LeaseOutcome, OutcomeReport
from storage_session_support import IDLE, add_proxies, bind, leases_out, used_once

SITE = "shop.example"


def ban_for_site(storage: IStorage, proxy_id: object) -> None:
    """Cool ``proxy_id`` down for SITE only (a ban scoped to the domain)."""
    (proxy,) = [p for p in storage.list_proxies("pool") if p.id == proxy_id]
    lease = storage.create_lease(proxy, "plain-crawl", 60)
    assert storage.release_lease(
        lease, OutcomeReport(outcome=LeaseOutcome.BAN, domain=SITE)
    )


def test_a_bind_that_does_not_join_finds_a_session_in_use_busy(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    first = bind(storage, idle=30)
    assert storage.bind_session("pool", "login", "other", 600, 3000, join=False) is None
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.lease_id == first.lease.id
    # Not extended: a crawl that died still lets its session go in time.
    assert stored.lease_expires_at == first.session.lease_expires_at
    assert leases_out(storage) == 1


def test_a_bind_that_does_not_join_resumes_a_session_whose_lease_lapsed(
    storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 2)
    first = bind(storage, idle=0.3)
    wait(0.6)
    resumed = bind(storage, join=False)
    assert resumed.event == "resumed"
    assert resumed.lease.proxy_id == first.lease.proxy_id
    assert leases_out(storage) == 1


def test_a_parked_session_is_not_resumed_on_a_proxy_cooling_down_for_its_site(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    first = bind(storage, domain=SITE)
    assert storage.park_session(used_once(storage, first), first.lease)
    ban_for_site(storage, first.lease.proxy_id)
    moved = bind(storage, domain=SITE)
    assert moved.event == "created"
    assert moved.lease.proxy_id != first.lease.proxy_id
    assert moved.session.cookies == []


def test_a_new_session_for_a_site_is_not_bound_to_a_proxy_cooling_down_for_it(
    storage: IStorage,
) -> None:
    proxies = add_proxies(storage, 2)
    ban_for_site(storage, proxies[0].id)
    for key in ("a", "b", "c"):
        binding = bind(storage, key, domain=SITE)
        assert binding.lease.proxy_id == proxies[1].id
        assert storage.end_session("pool", key)
    # Another site may still have it.
    other = bind(storage, "d", domain="other.example")
    assert other is not None


def test_a_rotation_for_a_site_passes_over_a_proxy_cooling_down_for_it(
    storage: IStorage,
) -> None:
    proxies = add_proxies(storage, 3)
    binding = bind(storage, domain=SITE)
    cooling = next(p for p in proxies if p.id != binding.lease.proxy_id)
    ban_for_site(storage, cooling.id)
    rotated = storage.rotate_session(
        binding.session, binding.lease, "worker", IDLE, domain=SITE, join=False
    )
    assert rotated is not None
    assert rotated.lease.proxy_id not in (binding.lease.proxy_id, cooling.id)
    assert leases_out(storage) == 1


def test_a_renewal_that_is_no_use_extends_the_lease_and_counts_nothing(
    storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage, idle=30)
    used = used_once(storage, binding)
    wait(0.01)
    kept = storage.renew_session(used, binding.lease, 600, used=False)
    assert kept is not None
    assert (kept.uses, kept.last_used_at) == (used.uses, used.last_used_at)
    assert kept.lease_expires_at is not None
    assert kept.lease_expires_at >= binding.lease.expires_at + timedelta(seconds=500)
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.lease_expires_at == kept.lease_expires_at
