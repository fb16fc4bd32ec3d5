"""Async helpers: the manager's calls never block the event loop.

Acquire and release wait on the loop itself when the storage can
(``IStorage.native_async``: SqlStorage on PostgreSQL), else in a worker thread,
like everything else here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .manager import ProxyManager
from .models import Lease, ProxyFilters, SelectorStrategy


async def acquire_proxy_async(
    manager: ProxyManager,
    pool_name: str,
    consumer_name: str | None = None,
    duration_seconds: float = 300,
    filters: ProxyFilters | None = None,
    selector: SelectorStrategy | None = None,
) -> Lease | None:
    """``manager.acquire_proxy`` without blocking the event loop."""
    return await manager.acquire_proxy_async(
        pool_name, consumer_name, duration_seconds, filters, selector
    )


async def acquire_proxy_with_retry_async(
    manager: ProxyManager,
    pool_name: str,
    consumer_name: str | None = None,
    duration_seconds: float = 300,
    filters: ProxyFilters | None = None,
    selector: SelectorStrategy | None = None,
    max_attempts: int = 3,
    backoff_seconds: float = 0.5,
    backoff_multiplier: float = 2.0,
    max_backoff_seconds: float | None = None,
    sleep_fn: Callable[[float], Any] | None = None,
) -> Lease | None:
    """``manager.acquire_proxy_with_retry`` without blocking the event loop."""
    return await asyncio.to_thread(
        manager.acquire_proxy_with_retry,
        pool_name,
        consumer_name,
        duration_seconds,
        filters,
        selector,
        max_attempts,
        backoff_seconds,
        backoff_multiplier,
        max_backoff_seconds,
        sleep_fn,
    )


async def release_proxy_async(manager: ProxyManager, lease: Lease) -> bool:
    """``manager.release_proxy`` without blocking the event loop."""
    return await manager.release_proxy_async(lease)


@asynccontextmanager
async def with_lease_async(
    manager: ProxyManager,
    pool_name: str,
    consumer_name: str | None = None,
    duration_seconds: float = 300,
    filters: ProxyFilters | None = None,
    selector: SelectorStrategy | None = None,
) -> AsyncIterator[Lease | None]:
    """Async ``with_lease``: the lease is released even when the block raises."""
    lease = await acquire_proxy_async(
        manager, pool_name, consumer_name, duration_seconds, filters, selector
    )
    try:
        yield lease
    finally:
        if lease is not None:
            await release_proxy_async(manager, lease)


@asynccontextmanager
async def with_retrying_lease_async(
    manager: ProxyManager,
    pool_name: str,
    consumer_name: str | None = None,
    duration_seconds: float = 300,
    filters: ProxyFilters | None = None,
    selector: SelectorStrategy | None = None,
    max_attempts: int = 3,
    backoff_seconds: float = 0.5,
    backoff_multiplier: float = 2.0,
    max_backoff_seconds: float | None = None,
    sleep_fn: Callable[[float], Any] | None = None,
) -> AsyncIterator[Lease | None]:
    """Async ``with_retrying_lease``: released even when the block raises."""
    lease = await acquire_proxy_with_retry_async(
        manager,
        pool_name,
        consumer_name,
        duration_seconds,
        filters,
        selector,
        max_attempts,
        backoff_seconds,
        backoff_multiplier,
        max_backoff_seconds,
        sleep_fn,
    )
    try:
        yield lease
    finally:
        if lease is not None:
            await release_proxy_async(manager, lease)
