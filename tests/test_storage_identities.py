"""The gateway part of the storage contract, over every adapter: a gateway's
exits are proxies of their own (found again by identity when added anew), and a
renewal moves one exit to a new session id by compare and set, with its health,
cooldowns and reuse delays starting afresh."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from conftest import Now
from test_storage_session_primitives import AdapterBeforeSessions

from scrapy_pharox import (
    InvalidArgumentError,
    IStorage,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyNotFoundError,
    ProxyPool,
)
from scrapy_pharox.models import gateway_identities

POOL = "gateway"
GATEWAY = "http://cust-42-session-{session}:s3cret@10.1.2.3:7000"


def exits(
    storage: IStorage, url: str = GATEWAY, identities: int = 3, **fields: Any
) -> list[Proxy]:
    """The gateway's exits, added to the pool (as a crawl's start does)."""
    pool = storage.add_pool(ProxyPool(name=POOL))
    return [
        storage.add_proxy(proxy)
        for proxy in gateway_identities(
            url, identities, pool_id=pool.id, max_concurrency=1, **fields
        )
    ]


def test_a_gateway_s_exits_are_proxies_of_their_own_each_with_its_session_id(
    storage: IStorage,
) -> None:
    added = exits(storage)
    stored = storage.list_proxies(POOL)
    assert len(stored) == 3 and {p.id for p in stored} == {p.id for p in added}
    for proxy in stored:
        assert proxy.session_id is not None and len(proxy.session_id) == 12
        assert proxy.credentials is not None
        assert proxy.credentials.user == f"cust-42-session-{proxy.session_id}"
        assert proxy.session_seconds == 600
    leases = [storage.acquire(POOL, "worker", 30) for _ in range(3)]
    assert len({lease.proxy_id for lease in leases if lease is not None}) == 3
    assert storage.acquire(POOL, "worker", 30) is None  # one request per exit


@pytest.mark.parametrize(
    "url",
    [GATEWAY, "http://cust-42:pw-{session}@10.1.2.3:7000"],
    ids=["id-in-user", "id-in-password"],
)
def test_a_gateway_added_again_keeps_its_stored_exits_and_their_session_ids(
    storage: IStorage, url: str
) -> None:
    first = exits(storage, url)
    again = exits(storage, url)  # a new start makes new ids: the stored ones win
    assert [p.id for p in again] == [p.id for p in first]
    assert [p.session_id for p in again] == [p.session_id for p in first]
    assert len(storage.list_proxies(POOL)) == 3


def test_a_renewal_gives_the_exit_a_new_id_and_a_fresh_start(
    storage: IStorage, now: Now
) -> None:
    exit_ = exits(storage, identities=1)[0]
    assert exit_.session_id is not None
    lease = storage.acquire(POOL, "worker", 30, domain="example.com")
    assert lease is not None
    storage.release_lease(
        lease, OutcomeReport(outcome=LeaseOutcome.BAN, domain="example.com")
    )
    lease = storage.acquire(POOL, "worker", 30)
    assert lease is not None
    storage.release_lease(lease, OutcomeReport(outcome=LeaseOutcome.BAN))
    assert storage.acquire(POOL, "worker", 30) is None  # cooling down
    assert storage.list_domain_cooldowns(POOL)
    before = now()
    renewed = storage.renew_identity(exit_.id, exit_.session_id, "Fresh0000001")
    assert renewed.session_id == "Fresh0000001"
    assert renewed.credentials is not None
    assert renewed.credentials.user == "cust-42-session-Fresh0000001"
    assert renewed.credentials.password == "s3cret"
    assert (renewed.bans, renewed.consecutive_bans, renewed.cooldown_until) == (
        0,
        0,
        None,
    )
    assert renewed.session_started_at is not None
    assert renewed.session_started_at >= before - timedelta(seconds=1)
    assert storage.list_domain_cooldowns(POOL) == []
    again = storage.acquire(POOL, "worker", 30, domain="example.com")
    assert again is not None and again.proxy is not None
    assert again.proxy.session_id == "Fresh0000001"
    assert again.proxy.url == "http://cust-42-session-Fresh0000001:s3cret@10.1.2.3:7000"


def test_a_renewal_from_an_id_the_exit_no_longer_holds_changes_nothing(
    storage: IStorage,
) -> None:
    exit_ = exits(storage, identities=1)[0]
    assert exit_.session_id is not None
    first = storage.renew_identity(exit_.id, exit_.session_id, "Winner000001")
    second = storage.renew_identity(exit_.id, exit_.session_id, "Loser0000001")
    assert first.session_id == second.session_id == "Winner000001"
    assert second.credentials == first.credentials
    [stored] = storage.list_proxies(POOL)
    assert stored.session_id == "Winner000001"


def test_a_renewal_with_max_leases_waits_for_the_exit_s_requests(
    storage: IStorage,
) -> None:
    exit_ = exits(storage, identities=1)[0]
    assert exit_.session_id is not None
    lease = storage.acquire(POOL, "worker", 30)
    assert lease is not None
    busy = storage.renew_identity(
        exit_.id, exit_.session_id, "New000000001", max_leases=0
    )
    assert busy.session_id == exit_.session_id
    renewed = storage.renew_identity(
        exit_.id, exit_.session_id, "New000000001", max_leases=1
    )
    assert (renewed.session_id, renewed.current_leases) == ("New000000001", 1)
    assert storage.release_lease(lease)
    [stored] = storage.list_proxies(POOL)
    assert stored.current_leases == 0


def test_renewing_an_unknown_proxy_is_refused(storage: IStorage) -> None:
    with pytest.raises(ProxyNotFoundError):
        storage.renew_identity(uuid4(), "Old000000001", "New000000001")


@pytest.mark.parametrize(
    ("session_id", "new_session_id", "max_leases", "named"),
    [
        ("Old000000001", "", None, "''"),
        ("Old000000001", "has space", None, "'has space'"),
        ("Old000000001", "Old000000001", None, "'Old000000001'"),
        ("Old000000001", "New000000001", -1, "-1"),
    ],
)
def test_a_bad_renewal_is_refused_before_any_io_naming_the_value(
    storage: IStorage,
    session_id: str,
    new_session_id: str,
    max_leases: int | None,
    named: str,
) -> None:
    for adapter in (storage, AdapterBeforeSessions()):  # type: ignore[abstract]
        with pytest.raises(InvalidArgumentError, match=re.escape(named)):
            adapter.renew_identity(
                uuid4(), session_id, new_session_id, max_leases=max_leases
            )


def test_an_adapter_written_before_gateways_says_it_has_none() -> None:
    adapter = AdapterBeforeSessions()  # type: ignore[abstract]
    with pytest.raises(InvalidArgumentError, match="no gateway exits"):
        adapter.renew_identity(uuid4(), "Old000000001", "New000000001")
