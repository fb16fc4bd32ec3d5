"""The session part of the storage contract, over every adapter: binding a key,
renewing, parking and ending. The primitives under them are tested in
test_storage_session_primitives.py; rotation, races and secrets in
test_storage_session_rotation.py."""

from __future__ import annotations

from datetime import timedelta

from conftest import Wait

from scrapy_pharox import (
    IStorage,
    ProxyFilters,
    ProxyStatus,
    bootstrap_pool,
    bootstrap_proxy,
)
from storage_session_support import (
    COOKIES,
    IDLE,
    MAX_AGE,
    PROXY_PASSWORD,
    add_proxies,
    bind,
    leases_out,
    used_once,
)

# -- binding ----------------------------------------------------------------------


def test_a_new_key_starts_generation_1_on_a_leased_proxy_without_cookies(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    binding = bind(storage)
    session, lease = binding.session, binding.lease
    assert (binding.event, binding.expired) == ("created", False)
    assert (session.generation, session.uses, session.cookies) == (1, 0, [])
    assert session.lease_id == lease.id and session.proxy_id == lease.proxy_id
    assert lease.proxy is not None and lease.proxy.credentials is not None
    assert lease.proxy.credentials.password == PROXY_PASSWORD
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.proxy is not None
    assert (stored.generation, stored.lease_id) == (1, lease.id)
    assert stored.proxy.id == lease.proxy_id and stored.proxy.current_leases == 1
    assert leases_out(storage) == 1


def test_a_key_whose_lease_is_live_is_joined_and_its_lease_extended(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    first = bind(storage, idle=30)
    again = bind(storage, idle=600)
    assert again.event == "joined" and again.lease.id == first.lease.id
    assert again.session.generation == 1
    assert again.lease.expires_at >= first.lease.expires_at + timedelta(seconds=500)
    assert again.lease.proxy is not None and again.lease.proxy.credentials
    assert leases_out(storage) == 1


def test_a_parked_session_resumes_on_its_proxy_with_its_cookies_and_uses(
    storage: IStorage,
) -> None:
    add_proxies(storage, 3)
    first = bind(storage)
    assert storage.park_session(used_once(storage, first), first.lease)
    assert leases_out(storage) == 0
    resumed = bind(storage)
    assert resumed.event == "resumed" and resumed.lease.id != first.lease.id
    assert resumed.lease.proxy_id == first.lease.proxy_id
    assert resumed.session.generation == 1
    assert (resumed.session.uses, resumed.session.cookies) == (1, COOKIES)
    assert resumed.session.lease_id == resumed.lease.id
    assert leases_out(storage) == 1


def test_a_session_whose_lease_lapsed_resumes_on_its_exclusive_proxy(
    storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 2)
    first = bind(storage, idle=0.3)
    wait(0.6)
    resumed = bind(storage)
    assert resumed.event == "resumed"
    assert resumed.lease.proxy_id == first.lease.proxy_id
    assert leases_out(storage) == 1


def test_a_parked_session_whose_proxy_another_holds_moves_to_another_proxy(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    first = bind(storage)
    assert storage.park_session(used_once(storage, first), first.lease)
    assert first.lease.proxy is not None
    storage.create_lease(first.lease.proxy, "someone-else", 60)
    moved = bind(storage)
    assert moved.event == "created" and moved.lease.proxy_id != first.lease.proxy_id
    session = moved.session
    assert (session.generation, session.uses, session.cookies) == (2, 0, [])
    assert leases_out(storage) == 2


def test_a_parked_session_whose_proxy_was_banned_moves_to_another_proxy(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2, max_concurrency=None)
    first = bind(storage)
    assert storage.park_session(used_once(storage, first), first.lease)
    storage.set_proxy_status(first.lease.proxy_id, ProxyStatus.BANNED)
    moved = bind(storage)
    assert moved.event == "created" and moved.lease.proxy_id != first.lease.proxy_id
    assert (moved.session.generation, moved.session.cookies) == (2, [])


def test_a_parked_session_whose_proxy_misses_the_filters_moves_to_one_that_meets_them(
    storage: IStorage,
) -> None:
    pool = bootstrap_pool(storage, name="pool")
    for port, country in ((10000, "FR"), (10001, "DE")):
        bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=port, country=country
        )
    first = bind(storage, filters=ProxyFilters(country="FR"))
    assert storage.park_session(first.session, first.lease)
    moved = bind(storage, filters=ProxyFilters(country="DE"))
    assert moved.event == "created" and moved.lease.proxy is not None
    assert moved.lease.proxy.country == "DE"


def test_a_session_past_its_max_age_is_dropped_and_started_again(
    storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 2)
    first = bind(storage)
    used_once(storage, first)
    wait(0.2)
    binding = storage.bind_session("pool", "login", "worker", IDLE, 0.2)
    assert binding is not None
    assert (binding.event, binding.expired) == ("created", True)
    assert binding.session.generation == 2 and binding.session.cookies == []
    assert binding.session.created_at > first.session.created_at
    assert leases_out(storage) == 1


def test_no_free_proxy_binds_nothing_writes_nothing_and_leases_nothing(
    storage: IStorage,
) -> None:
    (proxy,) = add_proxies(storage, 1)
    storage.create_lease(proxy, "someone-else", 60)
    assert storage.bind_session("pool", "login", "worker", IDLE, MAX_AGE) is None
    assert storage.get_session("pool", "login") is None
    assert leases_out(storage) == 1


# -- renewing, parking, ending ------------------------------------------------------


def test_a_renewal_counts_a_use_saves_the_cookies_and_extends_the_lease(
    storage: IStorage, wait: Wait
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage, idle=30)
    wait(0.01)
    renewed = storage.renew_session(binding.session, binding.lease, 600, COOKIES)
    assert renewed is not None and renewed.uses == 1
    assert renewed.last_used_at > binding.session.last_used_at
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at >= binding.lease.expires_at + timedelta(seconds=500)
    stored = storage.get_session("pool", "login")
    assert stored is not None and (stored.uses, stored.cookies) == (1, COOKIES)


def test_a_renewal_without_cookies_keeps_the_stored_ones(storage: IStorage) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    used_once(storage, binding)
    renewed = storage.renew_session(binding.session, binding.lease, IDLE)
    assert renewed is not None and (renewed.uses, renewed.cookies) == (2, COOKIES)


def test_a_renewal_after_the_generation_moved_on_fails_and_releases_its_lease(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    binding = bind(storage)
    stored = storage.get_session("pool", "login")
    assert stored is not None
    moved_on = stored.model_copy(update={"generation": 2})
    assert storage.put_session(moved_on, expected_generation=1)
    assert storage.renew_session(binding.session, binding.lease, IDLE) is None
    assert leases_out(storage) == 0


def test_a_renewal_of_a_lease_that_lapsed_fails(storage: IStorage, wait: Wait) -> None:
    add_proxies(storage, 1)
    binding = bind(storage, idle=0.3)
    wait(0.6)
    assert storage.renew_session(binding.session, binding.lease, IDLE) is None


def test_a_parked_session_keeps_its_row_and_gives_its_slot_back_once(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    assert storage.park_session(binding.session, binding.lease)
    assert not storage.park_session(binding.session, binding.lease)
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.parked
    assert (stored.lease_id, stored.consumer_id, stored.lease_expires_at) == (
        None,
        None,
        None,
    )
    assert leases_out(storage) == 0


def test_ending_a_session_deletes_its_row_and_releases_its_lease(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    bind(storage)
    assert storage.end_session("pool", "login")
    assert storage.get_session("pool", "login") is None
    assert leases_out(storage) == 0
    assert not storage.end_session("pool", "login")


def test_the_sessions_of_a_pool_are_listed_by_key_with_their_proxies(
    storage: IStorage,
) -> None:
    add_proxies(storage, 4, max_concurrency=None)
    add_proxies(storage, 1, pool_name="other")
    for key in ("b", "a", "B", "é"):
        bind(storage, key)
    assert storage.bind_session("other", "a", "worker", IDLE, MAX_AGE) is not None
    listed = storage.list_sessions("pool")
    assert [session.key for session in listed] == ["B", "a", "b", "é"]
    assert all(session.proxy is not None for session in listed)
    assert all(session.pool_name == "pool" for session in listed)
    assert storage.list_sessions("nowhere") == []
