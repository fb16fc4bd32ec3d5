"""``ProxyManager``: acquire, release and retry leases over any ``IStorage``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from .backoff import Backoff, same_parameters
from .models import (
    AcquireEventPayload,
    Lease,
    LeaseStatus,
    OutcomeReport,
    Paced,
    ProxyFilters,
    ReleaseEventPayload,
    SelectorStrategy,
    lease_or_none,
    utc_now,
)
from .storage.base import IStorage, check_lease_seconds, reuse_keyword

logger = logging.getLogger(__name__)

Payload = TypeVar("Payload", AcquireEventPayload, ReleaseEventPayload)


class ProxyManager:
    """Leases proxies from a storage and gives them back.

    The manager keeps no state but its callbacks, so any number of managers, in
    any number of processes, can share one storage.
    """

    DEFAULT_CONSUMER_NAME = "default"

    def __init__(self, storage: IStorage) -> None:
        self.storage = storage
        self._acquire_callbacks: list[Callable[[AcquireEventPayload], None]] = []
        self._release_callbacks: list[Callable[[ReleaseEventPayload], None]] = []

    def acquire_proxy(
        self,
        pool_name: str,
        consumer_name: str | None = None,
        duration_seconds: float = 300,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
        *,
        reuse_delay: float = 0.0,
    ) -> Lease | Paced | None:
        """Lease an eligible proxy of the pool, or return None when there is none.

        The consumer is registered on first use; expired leases are reclaimed
        before the search. With ``domain``, proxies cooling down for that target
        domain are passed over; with a ``reuse_delay`` too, proxies leased for
        it less than that many seconds ago, and a miss for that reason only is
        ``Paced`` (falsy, see ``IStorage``).
        """
        consumer, strategy = self._checked(consumer_name, duration_seconds, selector)
        started_at = utc_now() if self._acquire_callbacks else None
        acquire = self.storage.acquire
        # Two calls, not one with **reuse_keyword(): a call with ** costs some
        # 3,400 instructions, 3% of an in-memory acquire+release, and most
        # acquires have no reuse delay.
        if reuse_delay:
            lease = acquire(
                pool_name,
                consumer,
                duration_seconds,
                filters,
                strategy,
                domain=domain,
                reuse_delay=reuse_delay,
            )
        else:
            lease = acquire(
                pool_name, consumer, duration_seconds, filters, strategy, domain=domain
            )
        if started_at is not None:
            self._notify(
                self._acquire_callbacks,
                self._acquire_payload(
                    lease, pool_name, consumer, filters, strategy, started_at
                ),
            )
        return lease

    async def acquire_proxy_async(
        self,
        pool_name: str,
        consumer_name: str | None = None,
        duration_seconds: float = 300,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
        *,
        reuse_delay: float = 0.0,
    ) -> Lease | Paced | None:
        """``acquire_proxy`` for a coroutine, never blocking the running loop.

        The storage waits on the loop itself when it can (``native_async``);
        else ``acquire_proxy`` runs in a worker thread. Callbacks always do.
        """
        if not self.storage.native_async:
            return await asyncio.to_thread(
                partial(
                    self.acquire_proxy,
                    pool_name,
                    consumer_name,
                    duration_seconds,
                    filters,
                    selector,
                    domain,
                    reuse_delay=reuse_delay,
                )
            )
        consumer, strategy = self._checked(consumer_name, duration_seconds, selector)
        started_at = utc_now() if self._acquire_callbacks else None
        lease = await self.storage.acquire_async(
            pool_name,
            consumer,
            duration_seconds,
            filters,
            strategy,
            domain,
            **reuse_keyword(reuse_delay),
        )
        if started_at is not None:
            await asyncio.to_thread(
                self._notify,
                self._acquire_callbacks,
                self._acquire_payload(
                    lease, pool_name, consumer, filters, strategy, started_at
                ),
            )
        return lease

    def _checked(
        self,
        consumer_name: str | None,
        duration_seconds: float,
        selector: SelectorStrategy | None,
    ) -> tuple[str, SelectorStrategy]:
        """The consumer and selector an acquire uses; a bad duration raises."""
        check_lease_seconds(duration_seconds)
        consumer = consumer_name or self.DEFAULT_CONSUMER_NAME
        if selector is None:  # the common cases, without an Enum lookup
            return consumer, SelectorStrategy.FIRST_AVAILABLE
        if isinstance(selector, SelectorStrategy):
            return consumer, selector
        return consumer, SelectorStrategy(selector or SelectorStrategy.FIRST_AVAILABLE)

    def _acquire_payload(
        self,
        lease: Lease | Paced | None,
        pool_name: str,
        consumer: str,
        filters: ProxyFilters | None,
        strategy: SelectorStrategy,
        started_at: datetime,
    ) -> Callable[[], AcquireEventPayload]:
        def build() -> AcquireEventPayload:
            completed_at = utc_now()
            return AcquireEventPayload(
                lease=lease or None,
                pool_name=pool_name,
                consumer_name=consumer,
                filters=filters,
                selector=strategy,
                started_at=started_at,
                completed_at=completed_at,
                duration_ms=_elapsed_ms(started_at, completed_at),
                pool_stats=self.storage.get_pool_stats(pool_name),
            )

        return build

    def release_proxy(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        """Give a lease back; True when this call released it.

        A report of how it went (success, ban, failure) updates the proxy's
        health in the same storage step. A second release, or the release of a
        lease that expired and was reclaimed, changes nothing, returns False and
        runs no callback.
        """
        released = self.storage.release_lease(lease, report)
        if self._mark(lease, released) and self._release_callbacks:
            self._notify(self._release_callbacks, self._release_payload(lease))
        return released

    async def release_proxy_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        """``release_proxy`` for a coroutine, never blocking the running loop
        (a worker thread runs it unless the storage is ``native_async``)."""
        if not self.storage.native_async:
            return await asyncio.to_thread(self.release_proxy, lease, report)
        released = await self.storage.release_lease_async(lease, report)
        if self._mark(lease, released) and self._release_callbacks:
            await asyncio.to_thread(
                self._notify, self._release_callbacks, self._release_payload(lease)
            )
        return released

    def extend_lease(self, lease: Lease, duration_seconds: float) -> bool:
        """Keep the lease ``duration_seconds`` more, from now; True when it was
        extended (``lease.expires_at`` is then its new expiry).

        False, changing nothing, when it no longer holds its slot: released,
        reclaimed, or already past its expiry. A bad duration raises
        InvalidLeaseError before any storage call.
        """
        check_lease_seconds(duration_seconds)
        return _extended(lease, self.storage.extend_lease(lease, duration_seconds))

    async def extend_lease_async(self, lease: Lease, duration_seconds: float) -> bool:
        """``extend_lease`` for a coroutine, never blocking the running loop."""
        check_lease_seconds(duration_seconds)
        expires_at = await self.storage.extend_lease_async(lease, duration_seconds)
        return _extended(lease, expires_at)

    @staticmethod
    def _mark(lease: Lease, released: bool) -> bool:
        """Mark the lease released (stamped when this call did it); ``released``."""
        lease.status = LeaseStatus.RELEASED
        if released:
            lease.released_at = utc_now()
        return released

    def _release_payload(self, lease: Lease) -> Callable[[], ReleaseEventPayload]:
        released_at = lease.released_at or utc_now()

        def build() -> ReleaseEventPayload:
            return ReleaseEventPayload(
                lease=lease,
                pool_name=lease.pool_name,
                released_at=released_at,
                lease_duration_ms=_elapsed_ms(lease.acquired_at, released_at),
                pool_stats=(
                    self.storage.get_pool_stats(lease.pool_name)
                    if lease.pool_name
                    else None
                ),
            )

        return build

    def cleanup_expired_leases(self) -> int:
        """Reclaim every expired lease; return how many."""
        return self.storage.cleanup_expired_leases()

    @contextmanager
    def with_lease(
        self,
        pool_name: str,
        consumer_name: str | None = None,
        duration_seconds: float = 300,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
    ) -> Iterator[Lease | None]:
        """Yield a lease (or None) and release it however the block ends."""
        lease = lease_or_none(
            self.acquire_proxy(
                pool_name, consumer_name, duration_seconds, filters, selector
            )
        )
        try:
            yield lease
        finally:
            if lease is not None:
                self.release_proxy(lease)

    def acquire_proxy_with_retry(
        self,
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
        *,
        backoff: Backoff | None = None,
    ) -> Lease | None:
        """Try ``acquire_proxy`` up to ``max_attempts`` times, backing off between.

        ``backoff``, when given, replaces the five retry parameters before it.
        """
        if backoff is None:
            backoff = Backoff(
                max_attempts,
                backoff_seconds,
                backoff_multiplier,
                max_backoff_seconds,
                sleep_fn,
            )
        check_lease_seconds(duration_seconds)
        for wait in [*backoff.waits(), None]:
            lease = lease_or_none(
                self.acquire_proxy(
                    pool_name, consumer_name, duration_seconds, filters, selector
                )
            )
            if lease is not None or wait is None:
                return lease
            if wait > 0:
                backoff.sleep(wait)
        return None  # pragma: no cover - the loop always returns

    @same_parameters(acquire_proxy_with_retry)
    @contextmanager
    def with_retrying_lease(self, *args: Any, **kwargs: Any) -> Iterator[Lease | None]:
        """``with_lease`` over ``acquire_proxy_with_retry``; always releases."""
        lease = self.acquire_proxy_with_retry(*args, **kwargs)
        try:
            yield lease
        finally:
            if lease is not None:
                self.release_proxy(lease)

    def register_acquire_callback(
        self, callback: Callable[[AcquireEventPayload], None]
    ) -> None:
        """Run ``callback`` after every acquire attempt, hit or miss."""
        self._acquire_callbacks.append(callback)

    def register_release_callback(
        self, callback: Callable[[ReleaseEventPayload], None]
    ) -> None:
        """Run ``callback`` after every release that gave a slot back."""
        self._release_callbacks.append(callback)

    def _notify(
        self, callbacks: list[Callable[[Payload], None]], build: Callable[[], Payload]
    ) -> None:
        # A failing callback or stats query must not cost the caller its lease.
        try:
            payload = build()
        except Exception:
            logger.exception("could not build the pharox event payload")
            return
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:
                logger.exception("pharox callback %r raised", callback)


def _extended(lease: Lease, expires_at: datetime | None) -> bool:
    if expires_at is None:
        return False
    lease.expires_at = expires_at
    return True


def _elapsed_ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))
