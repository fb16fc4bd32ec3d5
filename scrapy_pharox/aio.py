"""Async helpers: the manager's calls never block the event loop.

Acquire and release wait on the loop itself when the storage can
(``IStorage.native_async``: SqlStorage on PostgreSQL), else in a worker thread,
like everything else here. Each helper takes the manager first, then the
parameters of the manager method it mirrors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .backoff import same_parameters
from .manager import ProxyManager
from .models import Lease, lease_or_none

#: ``manager.acquire_proxy`` without blocking the event loop.
acquire_proxy_async = ProxyManager.acquire_proxy_async

#: ``manager.release_proxy`` without blocking the event loop.
release_proxy_async = ProxyManager.release_proxy_async


@same_parameters(ProxyManager.acquire_proxy_with_retry)
async def acquire_proxy_with_retry_async(
    manager: ProxyManager, *args: Any, **kwargs: Any
) -> Lease | None:
    """``manager.acquire_proxy_with_retry`` without blocking the event loop."""
    return await asyncio.to_thread(manager.acquire_proxy_with_retry, *args, **kwargs)


@same_parameters(ProxyManager.with_lease)
@asynccontextmanager
async def with_lease_async(
    manager: ProxyManager, *args: Any, **kwargs: Any
) -> AsyncIterator[Lease | None]:
    """Async ``with_lease``: the lease is released even when the block raises."""
    lease = lease_or_none(await manager.acquire_proxy_async(*args, **kwargs))
    try:
        yield lease
    finally:
        if lease is not None:
            await manager.release_proxy_async(lease)


@same_parameters(ProxyManager.acquire_proxy_with_retry)
@asynccontextmanager
async def with_retrying_lease_async(
    manager: ProxyManager, *args: Any, **kwargs: Any
) -> AsyncIterator[Lease | None]:
    """Async ``with_retrying_lease``: released even when the block raises."""
    lease = await acquire_proxy_with_retry_async(manager, *args, **kwargs)
    try:
        yield lease
    finally:
        if lease is not None:
            await manager.release_proxy_async(lease)
