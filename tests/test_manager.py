"""ProxyManager beyond the storage contract: callbacks, retry, context managers."""

from __future__ import annotations

import logging

import pytest

from scrapy_pharox import (
    AcquireEventPayload,
    InMemoryStorage,
    InvalidArgumentError,
    PharoxError,
    PoolStatsSnapshot,
    ProxyFilters,
    ProxyManager,
    ReleaseEventPayload,
    SelectorStrategy,
    bootstrap_pool,
    bootstrap_proxy,
)


class CountingStorage(InMemoryStorage):
    """The in-memory storage, counting the pool-stats queries it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.stats_queries = 0

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        self.stats_queries += 1
        return super().get_pool_stats(pool_name)


@pytest.fixture
def storage() -> CountingStorage:
    store = CountingStorage()
    pool = bootstrap_pool(store, name="pool")
    bootstrap_proxy(store, pool=pool, host="127.0.0.1", port=3128, max_concurrency=1)
    return store


@pytest.fixture
def manager(storage: CountingStorage) -> ProxyManager:
    return ProxyManager(storage)


def test_default_consumer_name_is_default() -> None:
    assert ProxyManager.DEFAULT_CONSUMER_NAME == "default"


@pytest.mark.parametrize("duration", [0, -1, -0.5, float("nan"), float("inf")])
def test_a_duration_that_is_not_positive_is_refused(
    manager: ProxyManager, duration: float
) -> None:
    with pytest.raises(ValueError, match="duration_seconds") as caught:
        manager.acquire_proxy("pool", duration_seconds=duration)
    assert isinstance(caught.value, PharoxError)


# -- callbacks -------------------------------------------------------------------


def test_acquire_callback_sees_a_hit_with_pool_stats(manager: ProxyManager) -> None:
    events: list[AcquireEventPayload] = []
    manager.register_acquire_callback(events.append)
    filters = ProxyFilters(country=None)
    lease = manager.acquire_proxy(
        "pool", "worker", 30, filters, SelectorStrategy.LEAST_USED
    )
    (event,) = events
    assert event.lease is lease and lease is not None
    assert (event.pool_name, event.consumer_name) == ("pool", "worker")
    assert event.filters == filters and event.selector is SelectorStrategy.LEAST_USED
    assert event.started_at <= event.completed_at and event.duration_ms >= 0
    assert event.pool_stats is not None and event.pool_stats.total_leases == 1


def test_acquire_callback_sees_a_miss(manager: ProxyManager) -> None:
    events: list[AcquireEventPayload] = []
    manager.acquire_proxy("pool")
    manager.register_acquire_callback(events.append)
    assert manager.acquire_proxy("pool") is None
    (event,) = events
    assert event.lease is None and event.consumer_name == "default"
    assert event.selector is SelectorStrategy.FIRST_AVAILABLE
    assert event.pool_stats is not None and event.pool_stats.available_proxies == 0


def test_release_callback_sees_the_lease_and_stats_after_release(
    manager: ProxyManager,
) -> None:
    events: list[ReleaseEventPayload] = []
    manager.register_release_callback(events.append)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    manager.release_proxy(lease)
    (event,) = events
    assert event.lease is lease and event.pool_name == "pool"
    assert event.released_at == lease.released_at
    assert event.lease_duration_ms is not None and event.lease_duration_ms >= 0
    assert event.pool_stats is not None and event.pool_stats.total_leases == 0


def test_a_release_that_changed_nothing_runs_no_callback(manager: ProxyManager) -> None:
    events: list[ReleaseEventPayload] = []
    manager.register_release_callback(events.append)
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    manager.release_proxy(lease)
    manager.release_proxy(lease)
    assert len(events) == 1


def test_a_raising_callback_is_logged_and_keeps_the_lease_accounted(
    manager: ProxyManager, storage: CountingStorage, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(payload: object) -> None:
        raise RuntimeError("callback bug")

    later: list[object] = []
    manager.register_acquire_callback(explode)
    manager.register_acquire_callback(later.append)
    manager.register_release_callback(explode)
    with caplog.at_level(logging.ERROR, logger="scrapy_pharox.manager"):
        lease = manager.acquire_proxy("pool")
        assert lease is not None
        assert manager.release_proxy(lease) is True
    assert len(later) == 1
    assert (
        sum(
            "callback bug" in record.exc_text
            for record in caplog.records
            if record.exc_text
        )
        == 2
    )
    stats = storage.get_pool_stats("pool")
    assert stats is not None and stats.total_leases == 0


def test_pool_stats_are_not_queried_without_callbacks(
    manager: ProxyManager, storage: CountingStorage
) -> None:
    lease = manager.acquire_proxy("pool")
    assert lease is not None
    manager.release_proxy(lease)
    assert storage.stats_queries == 0


# -- context managers ------------------------------------------------------------


def test_with_lease_releases_when_the_block_raises(
    manager: ProxyManager, storage: CountingStorage
) -> None:
    with pytest.raises(KeyError), manager.with_lease("pool") as lease:
        assert lease is not None
        raise KeyError("boom")
    assert manager.acquire_proxy("pool") is not None


def test_with_lease_yields_none_when_the_pool_is_empty(manager: ProxyManager) -> None:
    with manager.with_lease("nowhere") as lease:
        assert lease is None


def test_with_retrying_lease_releases_on_exit(manager: ProxyManager) -> None:
    with manager.with_retrying_lease("pool", max_attempts=1) as lease:
        assert lease is not None
        assert manager.acquire_proxy("pool") is None
    assert manager.acquire_proxy("pool") is not None


# -- retry -----------------------------------------------------------------------


def test_retry_waits_grow_by_the_multiplier_up_to_the_cap(
    manager: ProxyManager,
) -> None:
    manager.acquire_proxy("pool")
    waits: list[float] = []
    lease = manager.acquire_proxy_with_retry(
        "pool",
        max_attempts=4,
        backoff_seconds=0.5,
        backoff_multiplier=3,
        max_backoff_seconds=2,
        sleep_fn=waits.append,
    )
    assert lease is None
    assert waits == [0.5, 1.5, 2.0]


def test_retry_stops_at_the_first_lease(manager: ProxyManager) -> None:
    held = manager.acquire_proxy("pool")
    assert held is not None
    waits: list[float] = []

    def release_while_waiting(wait: float) -> None:
        waits.append(wait)
        manager.release_proxy(held)

    lease = manager.acquire_proxy_with_retry(
        "pool", max_attempts=5, sleep_fn=release_while_waiting
    )
    assert lease is not None and waits == [0.5]


def test_retry_with_one_attempt_never_sleeps(manager: ProxyManager) -> None:
    manager.acquire_proxy("pool")
    waits: list[float] = []
    assert (
        manager.acquire_proxy_with_retry("pool", max_attempts=1, sleep_fn=waits.append)
        is None
    )
    assert waits == []


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"backoff_seconds": -0.1},
        {"backoff_multiplier": 0.5},
        {"max_backoff_seconds": 0},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_retry_parameters_are_refused_naming_the_parameter(
    manager: ProxyManager, bad: dict[str, float]
) -> None:
    with pytest.raises(InvalidArgumentError, match=next(iter(bad))) as caught:
        manager.acquire_proxy_with_retry("pool", **bad)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
