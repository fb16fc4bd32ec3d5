"""The embedded default: every pool in this process's memory, behind one lock.

Acquire and release cost O(log n) in the pool size when no filter is given: a heap
keeps the FIRST_AVAILABLE order of the proxies with a free slot, a heap keyed by
expiry finds the leases to reclaim, a released lease is forgotten at once, and
filtered and LEAST_USED selections walk the pool.
"""

from __future__ import annotations

import heapq
import threading
import time
from bisect import insort
from collections.abc import Callable
from datetime import datetime, timezone
from uuid import UUID, uuid4

from ..durations import check_seconds
from ..exceptions import PoolNotFoundError, ProxyNotFoundError, ProxyUnavailableError
from ..models import (
    DomainCooldown,
    Lease,
    LeaseStatus,
    OutcomeReport,
    Paced,
    PoolStatsSnapshot,
    Proxy,
    ProxyFilters,
    ProxyPool,
    ProxyStatus,
    SelectorStrategy,
    build_trusted,
    new_id,
    snapshot,
)
from .base import IStorage, check_lease_seconds
from .memory_identities import MemoryIdentities
from .memory_pool import ActiveLease, PoolIndex, Slot, order_key, record_outcome
from .memory_sessions import MemorySessions
from .memory_sources import MemorySources


class InMemoryStorage(MemorySessions, MemorySources, MemoryIdentities, IStorage):
    """Thread-safe storage in this process's memory; ``clock`` gives epoch seconds."""

    blocking_io = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: dict[str, PoolIndex] = {}
        self._pools_by_id: dict[UUID, PoolIndex] = {}
        self._consumers: dict[str, UUID] = {}
        # Keyed by lease.id.int: a UUID hashes in Python, an int in C.
        self._active: dict[int, ActiveLease] = {}
        self._expiry_heap: list[tuple[float, int]] = []
        self._cooldown_heap: list[tuple[float, UUID]] = []
        self._sessions, self._claims = {}, {}

    # -- administration -------------------------------------------------------

    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        with self._lock:
            existing = self._pools.get(pool.name)
            if existing is not None:
                return existing.model.model_copy()
            stored = PoolIndex(model=pool.model_copy())
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
            slot = Slot(proxy=stored, order_key=order_key(stored))
            pool.slots[stored.id] = slot
            pool.endpoints[stored.endpoint_key] = stored.id
            insort(pool.ids_in_order, (stored.id.int, stored.id))
            pool.push_if_free(slot, self._clock())
            return stored.model_copy()

    def _find_same(self, pool: PoolIndex, proxy: Proxy) -> Slot | None:
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
        if (consumer_id := self._consumers.get(consumer_name)) is None:
            consumer_id = self._consumers[consumer_name] = uuid4()
        return consumer_id

    # -- leasing --------------------------------------------------------------

    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Proxy | None:
        with self._lock:
            slot = self._select(
                pool_name, filters, selector, domain, self._clock(), 0.0, advance=False
            )
            return slot.proxy.model_copy() if isinstance(slot, Slot) else None

    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        check_lease_seconds(duration_seconds)
        with self._lock:
            pool = self._pools_by_id.get(proxy.pool_id)
            slot = pool.slots.get(proxy.id) if pool is not None else None
            if pool is None or slot is None:
                raise ProxyUnavailableError(f"proxy {proxy.id} is not in storage")
            if not slot.eligible(self._clock()):
                raise ProxyUnavailableError(f"proxy {proxy.id} has no free slot")
            return self._lease(pool, slot, consumer_name, duration_seconds)

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
        check_lease_seconds(duration_seconds)
        if reuse_delay:  # checked; it counts with a domain only
            reuse_delay = check_seconds(reuse_delay, "reuse_delay", zero=True)
            reuse_delay = reuse_delay if domain is not None else 0.0
        with self._lock:
            now = self._reclaim_expired()
            slot = self._select(
                pool_name, filters, selector, domain, now, reuse_delay, advance=True
            )
            if not isinstance(slot, Slot):
                self._consumer_id(consumer_name)
                return slot
            if reuse_delay:
                slot.leased_for[domain] = now  # type: ignore[index]
            return self._lease(
                self._pools[pool_name], slot, consumer_name, duration_seconds
            )

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        with self._lock:
            if (active := self._active.pop(lease.id.int, None)) is None:
                return False
            now = self._clock()
            if report is not None:
                self._record(active.slot, report, now)
            self._free(active, now)
            return True

    def extend_lease(self, lease: Lease, duration_seconds: float) -> datetime | None:
        check_lease_seconds(duration_seconds)
        with self._lock:
            active = self._active.get(lease.id.int)
            now = self._clock()
            if active is None or active.expires_at <= now:
                return None
            expires_at = datetime.fromtimestamp(now + duration_seconds, timezone.utc)
            active.expires_at = now + duration_seconds
            heapq.heappush(self._expiry_heap, (active.expires_at, lease.id.int))
            return expires_at

    def cleanup_expired_leases(self) -> int:
        with self._lock:
            before = len(self._active)
            self._reclaim_expired()
            return before - len(self._active)

    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is None:
                return None
            now = self._clock()
            slots = list(pool.slots.values())
            active = [s for s in slots if s.proxy.status is ProxyStatus.ACTIVE]
            return PoolStatsSnapshot(
                pool_name=pool_name,
                total_proxies=len(slots),
                active_proxies=len(active),
                available_proxies=sum(1 for slot in active if slot.eligible(now)),
                leased_proxies=sum(1 for slot in slots if slot.proxy.current_leases),
                total_leases=sum(slot.proxy.current_leases for slot in slots),
                cooling_proxies=sum(1 for slot in active if slot.cooldown_until > now),
                banned_proxies=sum(
                    1 for slot in slots if slot.proxy.status is ProxyStatus.BANNED
                ),
            )

    # -- health -----------------------------------------------------------------

    def set_proxy_status(
        self,
        proxy_id: UUID,
        status: ProxyStatus,
        *,
        latency_ms: float | None = None,
        checked: bool = False,
        reset_cooldown: bool = False,
    ) -> Proxy:
        with self._lock:
            pool = self._pool_of(proxy_id)
            if pool is None:
                raise ProxyNotFoundError(f"no proxy with id {proxy_id}")
            slot = pool.slots[proxy_id]
            now = self._clock()
            proxy = slot.proxy
            proxy.status = ProxyStatus(status)
            if latency_ms is not None:
                proxy.latency_ms = latency_ms
            if reset_cooldown:
                slot.cooldown_until = 0.0
                slot.domain_cooldowns.clear()
                proxy.cooldown_until = None
                proxy.consecutive_bans = proxy.consecutive_failures = 0
            if checked:
                proxy.checked_at = datetime.fromtimestamp(now, timezone.utc)
                slot.order_key = order_key(proxy)
                pool.rebuild_heap(now)
            else:
                pool.push_if_free(slot, now)
            return proxy.model_copy()

    def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is None:
                return []
            now = self._clock()
            return [
                DomainCooldown(
                    proxy_id=slot.proxy.id,
                    domain=domain,
                    consecutive_bans=strikes,
                    cooldown_until=datetime.fromtimestamp(until, timezone.utc),
                )
                for slot in pool.in_first_available_order()
                for domain, (strikes, until) in sorted(slot.domain_cooldowns.items())
                if until > now
            ]

    # -- internals, called with the lock held -----------------------------------

    def _select(
        self,
        pool_name: str,
        filters: ProxyFilters | None,
        selector: SelectorStrategy | None,
        domain: str | None,
        now: float,
        reuse_delay: float,
        *,
        advance: bool,
    ) -> Slot | Paced | None:
        """The slot to lease; with a reuse delay, Paced when every free slot
        that would do is inside its delay for the domain."""
        pool = self._pools.get(pool_name)
        if pool is None:
            return None
        strategy = selector or SelectorStrategy.FIRST_AVAILABLE
        if strategy is SelectorStrategy.FIRST_AVAILABLE and filters is None:
            first = pool.first_free(now)
            if first is None or domain is None:
                return first
            if first.ready_for(domain, now, reuse_delay):
                return first
        paced: list[float] = []

        def usable(slot: Slot) -> bool:
            if not (
                slot.eligible(now)
                and not slot.in_cooldown_for(domain, now)
                and (filters is None or filters.matches(slot.proxy))
            ):
                return False
            if reuse_delay:
                until = slot.paced_until(domain, reuse_delay)  # type: ignore[arg-type]
                if until > now:
                    paced.append(until)
                    return False
            return True

        if strategy is SelectorStrategy.ROUND_ROBIN:
            for slot in pool.from_round_robin_cursor():
                if usable(slot):
                    if advance:
                        pool.round_robin_cursor = slot.proxy.id.int
                    return slot
            return Paced(min(paced) - now) if paced else None
        candidates = [slot for slot in pool.slots.values() if usable(slot)]
        if not candidates:
            return Paced(min(paced) - now) if paced else None
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
        self, pool: PoolIndex, slot: Slot, consumer_name: str, duration_seconds: float
    ) -> Lease:
        now = self._clock()
        expires_at = now + duration_seconds
        # What can fail comes before the claim: a failed acquire takes no slot.
        fields = {
            "id": new_id(),
            "proxy_id": slot.proxy.id,
            "consumer_id": self._consumer_id(consumer_name),
            "pool_id": pool.model.id,
            "pool_name": pool.model.name,
            "status": LeaseStatus.ACTIVE,
            "acquired_at": datetime.fromtimestamp(now, timezone.utc),
            "expires_at": datetime.fromtimestamp(expires_at, timezone.utc),
            "released_at": None,
        }
        slot.proxy.current_leases += 1
        if not slot.proxy.has_capacity and slot.in_heap:
            pool.first_free(now)  # drops the now-full proxy from the top of the heap
        fields["proxy"] = snapshot(slot.proxy)
        lease = build_trusted(Lease, fields)
        self._active[lease.id.int] = ActiveLease(pool, slot, expires_at)
        heapq.heappush(self._expiry_heap, (expires_at, lease.id.int))
        return lease

    def _free(self, active: ActiveLease, now: float) -> None:
        active.slot.proxy.current_leases -= 1
        active.pool.push_if_free(active.slot, now)

    def _record(self, slot: Slot, report: OutcomeReport, now: float) -> None:
        until = record_outcome(slot, report, now)
        if until is not None:  # it rests until then: wake it then
            heapq.heappush(self._cooldown_heap, (until, slot.proxy.id))

    def _reclaim_expired(self) -> float:
        """Reclaim expired leases and wake rested proxies; return now."""
        now = self._clock()
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires_at, lease_id = heapq.heappop(heap)
            active = self._active.get(lease_id)
            # An extended lease left its former expiry behind: not this one.
            if active is not None and active.expires_at == expires_at:
                del self._active[lease_id]
                self._free(active, now)
        # Released leases leave their expiry entry behind; drop them in bulk so
        # memory follows the active leases, not the history.
        if len(heap) > 2 * len(self._active) + 1024:
            self._expiry_heap = [
                (active.expires_at, lease_id)
                for lease_id, active in self._active.items()
            ]
            heapq.heapify(self._expiry_heap)
        while self._cooldown_heap and self._cooldown_heap[0][0] <= now:
            _, proxy_id = heapq.heappop(self._cooldown_heap)
            pool = self._pool_of(proxy_id)
            if pool is not None:
                pool.push_if_free(pool.slots[proxy_id], now)
        return now
