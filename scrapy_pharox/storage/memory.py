"""The embedded default: every pool in this process's memory, behind one lock.

Acquire and release cost O(log n) in the pool size when no filter is given: a heap
keeps the FIRST_AVAILABLE order of the proxies with a free slot, a heap keyed by
expiry finds the leases to reclaim, and a released lease is forgotten at once.
Filtered and LEAST_USED selections walk the pool.
"""

from __future__ import annotations

import heapq
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID, uuid4

from ..exceptions import PoolNotFoundError, ProxyUnavailableError
from ..models import (
    Lease,
    LeaseStatus,
    PoolStatsSnapshot,
    Proxy,
    ProxyFilters,
    ProxyPool,
    ProxyStatus,
    SelectorStrategy,
)
from .base import IStorage

FirstAvailableKey = tuple[float, int]


@dataclass(slots=True)
class _Slot:
    """A stored proxy and its place in the FIRST_AVAILABLE order."""

    proxy: Proxy
    order_key: FirstAvailableKey
    in_heap: bool = False

    @property
    def eligible(self) -> bool:
        return self.proxy.status is ProxyStatus.ACTIVE and self.proxy.has_capacity


@dataclass(slots=True)
class _Pool:
    model: ProxyPool
    slots: dict[UUID, _Slot] = field(default_factory=dict)
    endpoints: dict[tuple[str, str, int, str | None], UUID] = field(
        default_factory=dict
    )
    free_heap: list[tuple[FirstAvailableKey, UUID]] = field(default_factory=list)
    ids_in_order: list[UUID] = field(default_factory=list)
    round_robin_cursor: UUID | None = None

    def push_if_free(self, slot: _Slot) -> None:
        if slot.eligible and not slot.in_heap:
            slot.in_heap = True
            heapq.heappush(self.free_heap, (slot.order_key, slot.proxy.id))

    def first_free(self) -> _Slot | None:
        while self.free_heap:
            slot = self.slots[self.free_heap[0][1]]
            if slot.eligible:
                return slot
            heapq.heappop(self.free_heap)
            slot.in_heap = False
        return None

    def in_first_available_order(self) -> list[_Slot]:
        return sorted(self.slots.values(), key=lambda slot: slot.order_key)

    def from_round_robin_cursor(self) -> Iterator[_Slot]:
        ids = self.ids_in_order
        start = 0
        if self.round_robin_cursor is not None:
            start = bisect_right(ids, self.round_robin_cursor)
        for offset in range(len(ids)):
            yield self.slots[ids[(start + offset) % len(ids)]]


@dataclass(slots=True)
class _ActiveLease:
    pool: _Pool
    slot: _Slot
    expires_at: float


def _order_key(proxy: Proxy) -> FirstAvailableKey:
    return (-proxy.checked_at.timestamp(), proxy.id.int)


class InMemoryStorage(IStorage):
    """Thread-safe storage in this process's memory; ``clock`` gives epoch seconds."""

    blocking_io = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}
        self._pools_by_id: dict[UUID, _Pool] = {}
        self._consumers: dict[str, UUID] = {}
        self._active: dict[UUID, _ActiveLease] = {}
        self._expiry_heap: list[tuple[float, UUID]] = []

    # -- administration -------------------------------------------------------

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        with self._lock:
            existing = self._pools.get(pool.name)
            if existing is not None:
                return existing.model.model_copy()
            stored = _Pool(model=pool.model_copy())
            self._pools[pool.name] = stored
            self._pools_by_id[pool.id] = stored
            return pool.model_copy()

    def add_proxy(self, proxy: Proxy) -> Proxy:
        with self._lock:
            pool = self._pools_by_id.get(proxy.pool_id)
            if pool is None:
                raise PoolNotFoundError(f"no pool with id {proxy.pool_id}")
            known = self._find_same(pool, proxy)
            if known is not None:
                return known.proxy.model_copy()
            stored = proxy.model_copy(update={"current_leases": 0})
            slot = _Slot(proxy=stored, order_key=_order_key(stored))
            pool.slots[stored.id] = slot
            pool.endpoints[stored.endpoint_key] = stored.id
            pool.ids_in_order.insert(
                bisect_right(pool.ids_in_order, stored.id), stored.id
            )
            pool.push_if_free(slot)
            return stored.model_copy()

    def _find_same(self, pool: _Pool, proxy: Proxy) -> _Slot | None:
        for other in self._pools.values():
            if proxy.id in other.slots:
                return other.slots[proxy.id]
        same_endpoint = pool.endpoints.get(proxy.endpoint_key)
        return pool.slots[same_endpoint] if same_endpoint is not None else None

    def list_pools(self) -> list[ProxyPool]:
        with self._lock:
            return [
                self._pools[name].model.model_copy() for name in sorted(self._pools)
            ]

    def list_proxies(self, pool_name: str) -> list[Proxy]:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is None:
                return []
            return [slot.proxy.model_copy() for slot in pool.in_first_available_order()]

    def ensure_consumer(self, consumer_name: str) -> UUID:
        with self._lock:
            return self._consumer_id(consumer_name)

    def _consumer_id(self, consumer_name: str) -> UUID:
        consumer_id = self._consumers.get(consumer_name)
        if consumer_id is None:
            consumer_id = self._consumers[consumer_name] = uuid4()
        return consumer_id

    # -- leasing --------------------------------------------------------------

    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
    ) -> Proxy | None:
        with self._lock:
            slot = self._select(pool_name, filters, selector, advance_cursor=False)
            return slot.proxy.model_copy() if slot is not None else None

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        with self._lock:
            pool = self._pools_by_id.get(proxy.pool_id)
            slot = pool.slots.get(proxy.id) if pool is not None else None
            if pool is None or slot is None:
                raise ProxyUnavailableError(f"proxy {proxy.id} is not in storage")
            if not slot.eligible:
                raise ProxyUnavailableError(f"proxy {proxy.id} has no free slot")
            return self._lease(pool, slot, consumer_name, duration_seconds)

    def acquire(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
    ) -> Lease | None:
        with self._lock:
            self._reclaim_expired()
            slot = self._select(pool_name, filters, selector, advance_cursor=True)
            if slot is None:
                self._consumer_id(consumer_name)
                return None
            return self._lease(
                self._pools[pool_name], slot, consumer_name, duration_seconds
            )

    def release_lease(self, lease: Lease) -> bool:
        with self._lock:
            active = self._active.pop(lease.id, None)
            if active is None:
                return False
            self._free(active)
            return True

    def cleanup_expired_leases(self) -> int:
        with self._lock:
            return self._reclaim_expired()

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is None:
                return None
            proxies = [slot.proxy for slot in pool.slots.values()]
            active = [proxy for proxy in proxies if proxy.status is ProxyStatus.ACTIVE]
            return PoolStatsSnapshot(
                pool_name=pool_name,
                total_proxies=len(proxies),
                active_proxies=len(active),
                available_proxies=sum(1 for proxy in active if proxy.has_capacity),
                leased_proxies=sum(1 for proxy in proxies if proxy.current_leases),
                total_leases=sum(proxy.current_leases for proxy in proxies),
            )

    # -- internals, called with the lock held -----------------------------------

    def _select(
        self,
        pool_name: str,
        filters: ProxyFilters | None,
        selector: SelectorStrategy | None,
        *,
        advance_cursor: bool,
    ) -> _Slot | None:
        pool = self._pools.get(pool_name)
        if pool is None:
            return None
        strategy = selector or SelectorStrategy.FIRST_AVAILABLE
        if strategy is SelectorStrategy.FIRST_AVAILABLE and filters is None:
            return pool.first_free()
        if strategy is SelectorStrategy.ROUND_ROBIN:
            for slot in pool.from_round_robin_cursor():
                if _usable(slot, filters):
                    if advance_cursor:
                        pool.round_robin_cursor = slot.proxy.id
                    return slot
            return None
        candidates = [slot for slot in pool.slots.values() if _usable(slot, filters)]
        if not candidates:
            return None
        if strategy is SelectorStrategy.LEAST_USED:
            return min(
                candidates,
                key=lambda slot: (
                    slot.proxy.current_leases,
                    -slot.order_key[0],
                    slot.order_key[1],
                ),
            )
        return min(candidates, key=lambda slot: slot.order_key)

    def _lease(
        self, pool: _Pool, slot: _Slot, consumer_name: str, duration_seconds: float
    ) -> Lease:
        now = self._clock()
        expires_at = now + duration_seconds
        slot.proxy.current_leases += 1
        if not slot.proxy.has_capacity and slot.in_heap:
            pool.first_free()  # drops the now-full proxy from the top of the heap
        lease = Lease.model_construct(
            id=uuid4(),
            proxy_id=slot.proxy.id,
            consumer_id=self._consumer_id(consumer_name),
            pool_id=pool.model.id,
            pool_name=pool.model.name,
            status=LeaseStatus.ACTIVE,
            acquired_at=datetime.fromtimestamp(now, timezone.utc),
            expires_at=datetime.fromtimestamp(expires_at, timezone.utc),
            released_at=None,
            proxy=slot.proxy.model_copy(),
        )
        self._active[lease.id] = _ActiveLease(pool, slot, expires_at)
        heapq.heappush(self._expiry_heap, (expires_at, lease.id))
        return lease

    def _free(self, active: _ActiveLease) -> None:
        active.slot.proxy.current_leases -= 1
        active.pool.push_if_free(active.slot)

    def _reclaim_expired(self) -> int:
        now = self._clock()
        heap = self._expiry_heap
        reclaimed = 0
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            active = self._active.pop(lease_id, None)
            if active is not None:
                self._free(active)
                reclaimed += 1
        # Released leases leave their expiry entry behind; drop them in bulk so
        # memory follows the active leases, not the history.
        if len(heap) > 2 * len(self._active) + 1024:
            self._expiry_heap = [
                (active.expires_at, lease_id)
                for lease_id, active in self._active.items()
            ]
            heapq.heapify(self._expiry_heap)
        return reclaimed


def _usable(slot: _Slot, filters: ProxyFilters | None) -> bool:
    return slot.eligible and (filters is None or filters.matches(slot.proxy))
