"""A storage whose acquire and release take the async path crawls use.

The contract suite calls storages synchronously; wrapped in ``AsyncPath``, a
PostgreSQL storage answers ``acquire``, ``release_lease`` and ``extend_lease``
through their ``_async`` versions on an asyncio loop of its own (the pipelined
rounds), and everything else as it is (the session operations compose the
former with the inner storage's session rows).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from scrapy_pharox import (
    IStorage,
    Lease,
    OutcomeReport,
    Proxy,
    ProxySession,
    ProxyStatus,
)
from scrapy_pharox.models import (
    DomainCooldown,
    Paced,
    PoolStatsSnapshot,
    ProxyFilters,
    ProxyPool,
    SelectorStrategy,
)
from scrapy_pharox.storage import SourceState

T = TypeVar("T")


class AsyncPath(IStorage):
    """``inner``, its acquire and release run as coroutines on a loop thread."""

    def __init__(self, inner: IStorage) -> None:
        assert inner.native_async, "the async path is PostgreSQL's"
        self.inner = inner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def acquire(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
        *,
        reuse_delay: float = 0.0,
    ) -> Lease | Paced | None:
        return self._on_loop(
            self.inner.acquire_async(
                pool_name,
                consumer_name,
                duration_seconds,
                filters,
                selector,
                domain,
                reuse_delay=reuse_delay,
            )
        )

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        return self._on_loop(self.inner.release_lease_async(lease, report))

    def extend_lease(self, lease: Lease, duration_seconds: float) -> datetime | None:
        return self._on_loop(self.inner.extend_lease_async(lease, duration_seconds))

    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Proxy | None:
        return self.inner.find_available_proxy(pool_name, filters, selector, domain)

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        return self.inner.create_lease(proxy, consumer_name, duration_seconds)

    def ensure_consumer(self, consumer_name: str) -> UUID:
        return self.inner.ensure_consumer(consumer_name)

    def set_proxy_status(
        self, proxy_id: UUID, status: ProxyStatus, **options: Any
    ) -> Proxy:
        return self.inner.set_proxy_status(proxy_id, status, **options)

    def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]:
        return self.inner.list_domain_cooldowns(pool_name)

    def cleanup_expired_leases(self) -> int:
        return self.inner.cleanup_expired_leases()

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        return self.inner.get_pool_stats(pool_name)

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        return self.inner.add_pool(pool)

    def add_proxy(self, proxy: Proxy) -> Proxy:
        return self.inner.add_proxy(proxy)

    def list_pools(self) -> list[ProxyPool]:
        return self.inner.list_pools()

    def list_proxies(self, pool_name: str) -> list[Proxy]:
        return self.inner.list_proxies(pool_name)

    # Sessions: the inner storage's rows, composed over the async leasing above.

    def get_session(self, pool_name: str, key: str) -> ProxySession | None:
        return self.inner.get_session(pool_name, key)

    def put_session(
        self, session: ProxySession, expected_generation: int | None, **fence: Any
    ) -> bool:
        return self.inner.put_session(session, expected_generation, **fence)

    def delete_session(
        self, pool_name: str, key: str, generation: int | None = None
    ) -> bool:
        return self.inner.delete_session(pool_name, key, generation)

    def list_sessions(self, pool_name: str) -> list[ProxySession]:
        return self.inner.list_sessions(pool_name)

    # Live lists: the inner storage's claims and states.

    def claim_refresh(self, pool_name: str, holder: str, seconds: float) -> bool:
        return self.inner.claim_refresh(pool_name, holder, seconds)

    def get_source_state(self, pool_name: str) -> SourceState:
        return self.inner.get_source_state(pool_name)

    def put_source_state(self, pool_name: str, holder: str, state: SourceState) -> bool:
        return self.inner.put_source_state(pool_name, holder, state)

    # Gateway exits: the inner storage's renewals.

    def renew_identity(
        self, proxy_id: UUID, session_id: str, new_session_id: str, **limit: Any
    ) -> Proxy:
        return self.inner.renew_identity(proxy_id, session_id, new_session_id, **limit)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.inner.close()
        self._loop.close()
