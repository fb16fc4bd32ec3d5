"""Proxy health shared through PostgreSQL: what one process reports, another obeys.

Each worker is a process of its own with its own SqlStorage; the cooldowns end
by the database's clock, with nothing else to do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import process_context

from scrapy_pharox import (
    CooldownPolicy,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyManager,
    SelectorStrategy,
    SqlStorage,
    bootstrap_pool,
    bootstrap_proxy,
    open_storage,
)
from scrapy_pharox.storage import (
    sql_expiry,
    sql_leasing,
    sql_outcomes,
    sql_query,
    sql_release,
)
from wire_support import WireTrace

#: One fixed rest, long enough to look at it from another process.
REST = CooldownPolicy(base_seconds=1.5, max_seconds=1.5, jitter=0.0)


def ban(url: str, domain: str | None, out: str) -> None:
    """A worker: lease the pool's proxy and report a ban on it."""
    storage = SqlStorage(url)
    try:
        manager = ProxyManager(storage)
        lease = manager.acquire_proxy("pool", "banner", domain=domain)
        report = OutcomeReport(
            outcome=LeaseOutcome.BAN, domain=domain, policy=REST, draw=0.5
        )
        released = lease is not None and manager.release_proxy(lease, report)
        Path(out).write_text(json.dumps(released))
    finally:
        storage.close()


def wait_for_a_lease(url: str, domain: str | None, out: str) -> None:
    """A worker: try to lease every 20 ms; write when the first lease came."""
    storage = SqlStorage(url)
    try:
        manager = ProxyManager(storage)
        deadline = time.time() + 15
        tries = 0
        while time.time() < deadline:
            tries += 1
            lease = manager.acquire_proxy("pool", "waiter", domain=domain)
            if lease is not None:
                got_at = time.time()
                manager.release_proxy(lease)
                Path(out).write_text(json.dumps({"at": got_at, "tries": tries}))
                return
            time.sleep(0.02)
        Path(out).write_text(json.dumps({"at": None, "tries": tries}))
    finally:
        storage.close()


def run_worker(target: Any, *args: Any) -> Any:
    """Run ``target(*args, out)`` in a process of its own; what it wrote."""
    with_out = Path(args[-1])
    process = process_context().Process(target=target, args=args)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    return json.loads(with_out.read_text())


@pytest.fixture
def shared(postgresql_url: str) -> Iterator[tuple[SqlStorage, Proxy]]:
    """This process's storage on a fresh schema, with one exclusive proxy."""
    storage = open_storage(postgresql_url)
    assert isinstance(storage, SqlStorage)
    try:
        pool = bootstrap_pool(storage, name="pool")
        proxy = bootstrap_proxy(
            storage, pool=pool, host="127.0.0.1", port=3128, max_concurrency=1
        )
        yield storage, proxy
    finally:
        storage.close()


@pytest.mark.postgres
def test_a_ban_reported_by_one_process_rests_the_proxy_for_the_others(
    postgresql_url: str, shared: tuple[SqlStorage, Proxy], tmp_path: Path
) -> None:
    storage, _ = shared
    waiter = process_context().Process(
        target=wait_for_a_lease,
        args=(postgresql_url, None, str(tmp_path / "waiter.json")),
    )
    assert run_worker(ban, postgresql_url, None, str(tmp_path / "ban.json")) is True
    (banned,) = storage.list_proxies("pool")
    assert (banned.bans, banned.consecutive_bans) == (1, 1)
    assert banned.cooldown_until is not None

    assert ProxyManager(storage).acquire_proxy("pool") is None
    waiter.start()
    waiter.join(timeout=60)
    waited = json.loads((tmp_path / "waiter.json").read_text())
    assert waited["at"] is not None, "the proxy never came back"
    came_back = datetime.fromtimestamp(waited["at"], timezone.utc)
    rest_left = (banned.cooldown_until - came_back).total_seconds()
    # Not before the cooldown ended (same machine, so the same clock), and soon
    # after: the waiter needed a few tries.
    assert -1.0 < rest_left <= 0.05
    assert waited["tries"] > 5


@pytest.mark.postgres
def test_a_domain_ban_from_another_process_rests_the_proxy_for_that_domain(
    postgresql_url: str, shared: tuple[SqlStorage, Proxy], tmp_path: Path
) -> None:
    storage, proxy = shared
    manager = ProxyManager(storage)
    banned = run_worker(ban, postgresql_url, "shop.example", str(tmp_path / "b.json"))
    assert banned is True
    assert manager.acquire_proxy("pool", domain="shop.example") is None
    other = manager.acquire_proxy("pool", domain="news.example")
    assert other is not None and other.proxy_id == proxy.id
    manager.release_proxy(other)
    (rest,) = storage.list_domain_cooldowns("pool")
    assert (rest.proxy_id, rest.domain, rest.consecutive_bans) == (
        proxy.id,
        "shop.example",
        1,
    )
    waited = run_worker(
        wait_for_a_lease, postgresql_url, "shop.example", str(tmp_path / "w.json")
    )
    assert waited["at"] is not None, "the proxy never came back for shop.example"
    assert rest.cooldown_until is not None
    came_back = datetime.fromtimestamp(waited["at"], timezone.utc)
    assert -1.0 < (rest.cooldown_until - came_back).total_seconds() <= 0.05
    assert storage.list_domain_cooldowns("pool") == []


@pytest.mark.postgres
@pytest.mark.parametrize("outcome", list(LeaseOutcome))
@pytest.mark.parametrize("domain", [None, "shop.example"])
def test_acquire_and_a_reported_release_are_two_round_trips(
    postgresql_url: str,
    shared: tuple[SqlStorage, Proxy],
    outcome: LeaseOutcome,
    domain: str | None,
) -> None:
    storage = SqlStorage(postgresql_url)
    manager = ProxyManager(storage)
    report = OutcomeReport(
        outcome=outcome,
        latency_ms=120,
        domain=domain,
        policy=CooldownPolicy(base_seconds=0.001, max_seconds=0.001),
    )
    opened: list[Any] = []  # every connection the storage opens
    storage.connection_hooks.append(opened.append)

    try:
        for _ in range(2):  # consumer registered, statements prepared
            warm_up = manager.acquire_proxy("pool", "counter", domain=domain)
            assert warm_up is not None and manager.release_proxy(warm_up, report)
            time.sleep(0.01)  # a ban rests the proxy up to 1.2 ms here: let it pass
        with WireTrace(opened) as wire:
            storage.connection_hooks.append(wire.follow)
            lease = manager.acquire_proxy("pool", "counter", domain=domain)
            assert lease is not None
            assert manager.release_proxy(lease, report)
        assert wire.round_trips == 2
    finally:
        storage.close()


def test_hot_statements_stay_within_the_psycopg_query_cache() -> None:
    limit = sql_query.PSYCOPG_CACHED_QUERY_BYTES
    acquires = [
        sql_leasing.pg_acquire(strategy, None, by_domain)
        for strategy in SelectorStrategy
        for by_domain in (False, True)
    ]
    releases = [
        sql_outcomes.pg_release_reported(outcome, by_domain)
        for outcome in LeaseOutcome
        for by_domain in (False, True)
    ]
    others = [
        sql_release.pg_release(),
        sql_leasing.pg_lease_proxy(),
        sql_expiry.pg_reclaim(),
    ]
    for prepared in acquires + releases + others:
        assert len(prepared.sql.encode()) <= limit, prepared.sql[:200]
