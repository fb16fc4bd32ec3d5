"""Backoff: the retry parameters as one value, checked once when built."""

from __future__ import annotations

from typing import Any

import pytest

from loop_support import run_on_a_loop
from scrapy_pharox import InMemoryStorage, InvalidArgumentError, ProxyManager
from scrapy_pharox.aio import with_retrying_lease_async
from scrapy_pharox.backoff import Backoff

WEEK = "(seconds, at most 604800: 7 days)"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"max_attempts": True}, "max_attempts must be an int, got True"),
        ({"max_attempts": 2.0}, "max_attempts must be an int, got 2.0"),
        (
            {"backoff_seconds": -0.1},
            f"backoff_seconds must be a number >= 0 {WEEK}, got -0.1",
        ),
        (
            {"backoff_seconds": float("nan")},
            f"backoff_seconds must be a number >= 0 {WEEK}, got nan",
        ),
        (
            {"backoff_seconds": 8 * 86400},
            f"backoff_seconds must be a number >= 0 {WEEK}, got 691200",
        ),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier must be >= 1, got 0.5"),
        (
            {"max_backoff_seconds": 0},
            f"max_backoff_seconds must be a number > 0 {WEEK}, got 0",
        ),
    ],
)
def test_a_backoff_with_a_bad_value_is_refused_naming_it(
    bad: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Backoff(**bad)
    assert str(caught.value) == message


def test_the_waits_grow_by_the_multiplier_up_to_the_cap() -> None:
    assert Backoff(4, 0.5, 3, 2).waits() == [0.5, 1.5, 2.0]
    assert Backoff(max_attempts=1).waits() == []


def test_a_backoff_object_drives_the_sync_and_async_retries() -> None:
    manager = ProxyManager(InMemoryStorage())  # no pool: every attempt misses
    waits: list[float] = []
    backoff = Backoff(max_attempts=3, backoff_seconds=0.25, sleep_fn=waits.append)
    assert manager.acquire_proxy_with_retry("pool", backoff=backoff) is None
    assert waits == [0.25, 0.5]

    async def retry_async() -> None:
        async with with_retrying_lease_async(manager, "pool", backoff=backoff) as lease:
            assert lease is None

    run_on_a_loop(retry_async())
    assert waits == [0.25, 0.5, 0.25, 0.5]


def test_the_forwarding_helpers_show_the_parameters_they_take() -> None:
    import inspect

    from scrapy_pharox import ProxyManager, with_retrying_lease_async

    for helper, first in (
        (with_retrying_lease_async, "manager"),
        (ProxyManager.with_retrying_lease, "self"),
    ):
        names = list(inspect.signature(helper).parameters)
        assert names[:3] == [first, "pool_name", "consumer_name"]
        assert {"max_attempts", "backoff_seconds", "backoff"} <= set(names)
