"""Helpers that put a pool and its proxies into a storage in one line each."""

from __future__ import annotations

from typing import Any

from .models import Proxy, ProxyPool, ProxyProtocol, ProxyStatus
from .storage.base import IStorage


def bootstrap_pool(
    storage: IStorage, *, name: str, description: str | None = None
) -> ProxyPool:
    """Create the pool (or find the one of that name) and return it."""
    return storage.add_pool(ProxyPool(name=name, description=description))


def bootstrap_proxy(
    storage: IStorage,
    *,
    pool: ProxyPool,
    host: str,
    port: int,
    protocol: ProxyProtocol = ProxyProtocol.HTTP,
    status: ProxyStatus = ProxyStatus.ACTIVE,
    **fields: Any,
) -> Proxy:
    """Add a proxy to ``pool`` (or find the same one there) and return it."""
    proxy = Proxy(
        host=host,
        port=port,
        protocol=protocol,
        status=status,
        pool_id=pool.id,
        **fields,
    )
    return storage.add_proxy(proxy)
