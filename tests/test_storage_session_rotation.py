"""Sessions of the storage contract, over every adapter: rotation to the next
generation, two binders racing on one key, and cookies and passwords kept out
of every repr and error."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import pytest

from scrapy_pharox import (
    InMemoryStorage,
    InvalidArgumentError,
    IStorage,
    LeaseOutcome,
    OutcomeReport,
    ProxySession,
    SessionBinding,
    open_storage,
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

BAN = OutcomeReport(outcome=LeaseOutcome.BAN)
SECRET = "c00kie-s3cret"  # the value of COOKIES' one cookie


def rotate(
    storage: IStorage, binding: SessionBinding, report: OutcomeReport | None = None
) -> SessionBinding | None:
    return storage.rotate_session(
        binding.session, binding.lease, "worker", IDLE, report
    )


# -- rotation ---------------------------------------------------------------------


def test_a_rotation_after_a_ban_cools_the_proxy_and_moves_to_another(
    storage: IStorage,
) -> None:
    add_proxies(storage, 2)
    first = bind(storage)
    used_once(storage, first)
    rotated = rotate(storage, first, BAN)
    assert rotated is not None and rotated.event == "created"
    assert rotated.lease.proxy_id != first.lease.proxy_id
    session = rotated.session
    assert (session.generation, session.uses, session.cookies) == (2, 0, [])
    banned = {proxy.id: proxy for proxy in storage.list_proxies("pool")}[
        first.lease.proxy_id
    ]
    assert banned.bans == 1 and banned.cooldown_until is not None
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.lease_id == rotated.lease.id
    assert leases_out(storage) == 1


@pytest.mark.parametrize("max_concurrency", [None, 2])
def test_a_rotation_without_a_report_moves_to_another_proxy_while_one_is_free(
    storage: IStorage, max_concurrency: int | None
) -> None:
    add_proxies(storage, 2, max_concurrency=max_concurrency)
    first = bind(storage)
    rotated = rotate(storage, first)
    assert rotated is not None and rotated.event == "created"
    assert rotated.lease.proxy_id != first.lease.proxy_id
    assert rotated.session.generation == 2
    assert leases_out(storage) == 1


@pytest.mark.parametrize("max_concurrency", [None, 1])
def test_a_rotation_without_a_report_keeps_the_only_proxy_with_a_new_generation(
    storage: IStorage, max_concurrency: int | None
) -> None:
    add_proxies(storage, 1, max_concurrency=max_concurrency)
    first = bind(storage)
    used_once(storage, first)
    rotated = rotate(storage, first)
    assert rotated is not None and rotated.event == "created"
    assert rotated.lease.proxy_id == first.lease.proxy_id
    assert (rotated.session.generation, rotated.session.cookies) == (2, [])
    assert leases_out(storage) == 1


def test_a_rotation_with_no_proxy_left_ends_the_session_and_leaks_no_lease(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    first = bind(storage)
    assert rotate(storage, first, BAN) is None
    assert storage.get_session("pool", "login") is None
    assert leases_out(storage) == 0


def test_a_rotation_that_another_beat_gives_the_winners_binding(
    storage: IStorage,
) -> None:
    add_proxies(storage, 3)
    first = bind(storage)
    winner = rotate(storage, first)
    late = rotate(storage, first)
    assert winner is not None and late is not None
    assert late.event == "joined" and late.lease.id == winner.lease.id
    assert late.session.generation == 2
    assert leases_out(storage) == 1


# -- racing binders -------------------------------------------------------------------


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def two_binders(request: pytest.FixtureRequest) -> Iterator[tuple[IStorage, IStorage]]:
    """Two binders on one storage: two threads on one memory storage, or two
    storage objects on one database (as two processes have)."""
    if request.param == "memory":
        memory = InMemoryStorage()
        yield memory, memory
        return
    url = str(request.getfixturevalue(f"{request.param}_url"))
    first = open_storage(url)
    second = open_storage(url)
    yield first, second
    first.close()
    second.close()


def bind_at_once(binders: tuple[IStorage, IStorage], key: str) -> list[Any]:
    """What two binders of ``key`` released at the same moment got."""
    start = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = binders[index].bind_session(
                "pool", key, f"worker-{index}", IDLE, MAX_AGE
            )
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


KEYS = [f"flow-{index}" for index in range(8)]


def test_two_binders_of_a_new_key_at_once_end_with_one_binding(
    two_binders: tuple[IStorage, IStorage],
) -> None:
    storage = two_binders[0]
    add_proxies(storage, 4, max_concurrency=None)
    for key in KEYS:
        one, other = bind_at_once(two_binders, key)
        assert isinstance(one, SessionBinding) and isinstance(other, SessionBinding)
        assert one.lease.id == other.lease.id
        assert one.session.generation == other.session.generation == 1
        assert sorted((one.event, other.event)) == ["created", "joined"]
    assert leases_out(storage) == len(KEYS)


def test_two_binders_of_a_parked_key_at_once_end_with_one_binding(
    two_binders: tuple[IStorage, IStorage],
) -> None:
    storage = two_binders[0]
    add_proxies(storage, 4, max_concurrency=None)
    for key in KEYS:
        parked = bind(storage, key)
        assert storage.park_session(parked.session, parked.lease)
    for key in KEYS:
        one, other = bind_at_once(two_binders, key)
        assert isinstance(one, SessionBinding) and isinstance(other, SessionBinding)
        assert one.lease.id == other.lease.id
        assert one.session.generation == other.session.generation == 1
        assert sorted((one.event, other.event)) == ["joined", "resumed"]
    assert leases_out(storage) == len(KEYS)


# -- secrets --------------------------------------------------------------------------


def test_a_session_and_its_binding_show_no_cookie_or_password_when_printed(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    session = used_once(storage, binding)
    shown = [repr(session), str(session), repr(replace(binding, session=session))]
    shown += [repr(stored) for stored in storage.list_sessions("pool")]
    for text in shown:
        assert SECRET not in text and PROXY_PASSWORD not in text
    assert "login" in shown[0]


def test_a_pickled_session_keeps_its_cookies_and_leaves_the_password_behind(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    session = used_once(storage, binding)
    written = pickle.dumps(session)
    assert PROXY_PASSWORD.encode() not in written
    back = pickle.loads(written)
    assert back.model_dump(exclude={"proxy"}) == session.model_dump(exclude={"proxy"})
    assert back.proxy is not None and back.proxy.credentials is None
    assert back.cookies == COOKIES


def session_fields(**fields: Any) -> dict[str, Any]:
    moment = datetime.now(timezone.utc)
    return {
        "pool_name": "pool",
        "key": "login",
        "generation": 1,
        "proxy_id": uuid4(),
        "created_at": moment,
        "last_used_at": moment,
        **fields,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"cookies": {"sid": SECRET}},
        {"cookies": [{"value": SECRET}], "key": ""},
        {"cookies": [SECRET]},
        {"cookies": [{"value": SECRET}], "lease_id": uuid4()},
    ],
)
def test_a_bad_session_is_an_argument_error_that_quotes_no_cookie(
    fields: dict[str, Any],
) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        ProxySession(**session_fields(**fields))
    assert SECRET not in str(bad.value)
    with pytest.raises(ValueError) as validated:
        ProxySession.model_validate(session_fields(**fields))
    assert SECRET not in str(validated.value)


def test_a_bad_key_is_named_in_the_error() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'k{201}'"):
        ProxySession(**session_fields(key="k" * 201))


def test_cookies_json_cannot_hold_are_refused_before_any_io_quoting_none(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    cookies = [{"value": SECRET, "expires": datetime.now(timezone.utc)}]
    with pytest.raises(InvalidArgumentError, match="JSON") as bad:
        storage.renew_session(binding.session, binding.lease, IDLE, cookies)
    assert SECRET not in str(bad.value)
    with pytest.raises(InvalidArgumentError, match="JSON") as bad:
        storage.put_session(binding.session.model_copy(update={"cookies": cookies}), 1)
    assert SECRET not in str(bad.value)
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.uses == 0 and stored.cookies == []
    assert COOKIES[0]["value"] == SECRET
