"""The session primitives of the storage contract, over every adapter: rows
written by compare and set, keys and spans checked before any I/O, and what an
adapter without sessions says."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import pytest

from scrapy_pharox import (
    InMemoryStorage,
    InvalidArgumentError,
    IStorage,
    PoolNotFoundError,
    ProxySession,
    StorageError,
)
from storage_session_support import (
    COOKIES,
    IDLE,
    MAX_AGE,
    add_proxies,
    bind,
    leases_out,
)


def parked_row(storage: IStorage, generation: int = 1) -> ProxySession:
    """A parked session of key "login" on the pool's first proxy (not stored)."""
    proxy = storage.list_proxies("pool")[0]
    moment = datetime.fromtimestamp(storage.session_clock(), timezone.utc)
    return ProxySession(
        pool_name="pool",
        key="login",
        generation=generation,
        proxy_id=proxy.id,
        created_at=moment,
        last_used_at=moment,
        cookies=COOKIES,
    )


def test_put_session_inserts_only_where_the_key_has_no_row(storage: IStorage) -> None:
    add_proxies(storage, 1)
    row = parked_row(storage)
    assert storage.put_session(row, None)
    assert not storage.put_session(row.model_copy(update={"uses": 5}), None)
    stored = storage.get_session("pool", "login")
    assert stored is not None and (stored.uses, stored.cookies) == (0, COOKIES)


def test_put_session_updates_only_the_expected_generation(storage: IStorage) -> None:
    add_proxies(storage, 1)
    assert not storage.put_session(parked_row(storage), 1)  # no row yet
    assert storage.put_session(parked_row(storage), None)
    assert storage.put_session(parked_row(storage, 2), 1)
    assert not storage.put_session(parked_row(storage, 3), 1)
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.generation == 2


def test_put_session_with_an_expected_lease_updates_only_a_row_naming_it(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    binding = bind(storage)
    row = binding.session.model_copy(update={"uses": 7})
    assert not storage.put_session(row, 1, expected_lease_id=uuid4())
    assert not storage.put_session(row, 1, expected_lease_id=None)
    assert storage.put_session(row, 1, expected_lease_id=binding.lease.id)
    stored = storage.get_session("pool", "login")
    assert stored is not None and stored.uses == 7


def test_delete_session_with_a_generation_deletes_only_that_one(
    storage: IStorage,
) -> None:
    add_proxies(storage, 1)
    assert storage.put_session(parked_row(storage, 3), None)
    assert not storage.delete_session("pool", "login", generation=2)
    assert storage.delete_session("pool", "login", generation=3)
    assert not storage.delete_session("pool", "login")


def test_put_session_into_an_unknown_pool_is_refused(storage: IStorage) -> None:
    add_proxies(storage, 1)
    row = parked_row(storage).model_copy(update={"pool_name": "nowhere"})
    with pytest.raises(PoolNotFoundError, match="nowhere"):
        storage.put_session(row, None)


class AdapterBeforeSessions(IStorage):
    """A third-party adapter written before sessions (its leasing unused here)."""


AdapterBeforeSessions.__abstractmethods__ = frozenset()


@pytest.mark.parametrize("key", ["", "k" * 201, None])
def test_a_bad_key_is_refused_before_any_io_naming_it(
    storage: IStorage, key: Any
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(key))):
        storage.bind_session("pool", key, "worker", IDLE, MAX_AGE)
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(key))):
        storage.end_session("pool", key)
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(key))):
        storage.get_session("pool", key)
    # Before any I/O: an adapter without sessions never gets as far as saying so.
    adapter = AdapterBeforeSessions()  # type: ignore[abstract]
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(key))):
        adapter.bind_session("pool", key, "worker", IDLE, MAX_AGE)


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("idle_seconds", 0), ("idle_seconds", float("nan")), ("max_age_seconds", -1)],
)
def test_a_bad_span_of_time_is_refused_before_any_io_naming_it(
    storage: IStorage, name: str, seconds: float
) -> None:
    spans = {"idle_seconds": IDLE, "max_age_seconds": MAX_AGE, name: seconds}
    named = rf"{name}.*{re.escape(repr(seconds))}"
    for adapter in (storage, AdapterBeforeSessions()):  # type: ignore[abstract]
        with pytest.raises(InvalidArgumentError, match=named):
            adapter.bind_session("pool", "login", "worker", **spans)


def test_an_adapter_written_before_sessions_says_it_has_none() -> None:
    adapter = AdapterBeforeSessions()  # type: ignore[abstract]
    with pytest.raises(
        InvalidArgumentError, match="AdapterBeforeSessions has no sessions"
    ):
        adapter.bind_session("pool", "login", "worker", IDLE, MAX_AGE)
    with pytest.raises(InvalidArgumentError, match="has no sessions"):
        adapter.list_sessions("pool")


class FailingWrites(InMemoryStorage):
    """Memory whose session writes fail once ``failing``, as a database that
    went away would."""

    failing = False

    def put_session(self, *args: Any, **options: Any) -> bool:
        if self.failing:
            raise StorageError("writing a session failed: the database went away")
        return super().put_session(*args, **options)


def test_a_bind_whose_write_fails_gives_its_lease_back() -> None:
    storage = FailingWrites()
    storage.failing = True
    add_proxies(storage, 1)
    with pytest.raises(StorageError, match="went away"):
        storage.bind_session("pool", "login", "worker", IDLE, MAX_AGE)
    assert leases_out(storage) == 0


def test_a_rotation_whose_write_fails_gives_its_new_lease_back() -> None:
    storage = FailingWrites()
    add_proxies(storage, 2)
    binding = bind(storage)
    storage.failing = True
    with pytest.raises(StorageError, match="went away"):
        storage.rotate_session(binding.session, binding.lease, "worker", IDLE)
    assert leases_out(storage) == 1  # the session's own, still its
    assert storage.extend_lease(binding.lease, IDLE) is not None
