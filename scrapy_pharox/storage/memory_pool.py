"""The in-memory adapter's index of one pool: its proxies' slots, the heap of
free proxies in FIRST_AVAILABLE order and the round-robin order by id; and how
an outcome changes a slot's proxy."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from uuid import UUID

from ..models import (
    LATENCY_SMOOTHING,
    LeaseOutcome,
    OutcomeReport,
    Proxy,
    ProxyPool,
    ProxyStatus,
)

FirstAvailableKey = tuple[float, int]


@dataclass(slots=True)
class Slot:
    """A stored proxy, its place in the FIRST_AVAILABLE order, and its cooldowns."""

    proxy: Proxy
    order_key: FirstAvailableKey
    in_heap: bool = False
    cooldown_until: float = 0.0
    domain_cooldowns: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: When an acquire with a reuse delay last leased it for each domain.
    leased_for: dict[str, float] = field(default_factory=dict)

    def eligible(self, now: float) -> bool:
        proxy = self.proxy
        # Proxy.has_capacity spelt out: a property call is most of this look.
        return (
            proxy.status is ProxyStatus.ACTIVE
            and (
                proxy.max_concurrency is None
                or proxy.current_leases < proxy.max_concurrency
            )
            and self.cooldown_until <= now
        )

    def in_cooldown_for(self, domain: str | None, now: float) -> bool:
        if domain is None or domain not in self.domain_cooldowns:
            return False
        return self.domain_cooldowns[domain][1] > now

    def paced_until(self, domain: str, reuse_delay: float) -> float:
        """When its reuse delay for ``domain`` ends (in the past: it has)."""
        return self.leased_for.get(domain, -reuse_delay) + reuse_delay

    def ready_for(self, domain: str, now: float, reuse_delay: float) -> bool:
        """Neither resting for ``domain`` nor inside its reuse delay there."""
        return not self.in_cooldown_for(domain, now) and (
            not reuse_delay or self.paced_until(domain, reuse_delay) <= now
        )


@dataclass(slots=True)
class PoolIndex:
    model: ProxyPool
    slots: dict[UUID, Slot] = field(default_factory=dict)
    endpoints: dict[tuple[str, str, int, str | None], UUID] = field(
        default_factory=dict
    )
    # The slot itself, not its id: no UUID hashed in Python per look. Keys are
    # unique (they end in the id), so a tuple comparison never reaches a slot.
    free_heap: list[tuple[FirstAvailableKey, Slot]] = field(default_factory=list)
    # (id.int, id) in id order; the cursor is the last leased id.int. Ints, not
    # UUIDs, so that the search and the lookups stay in C.
    ids_in_order: list[tuple[int, UUID]] = field(default_factory=list)
    round_robin_cursor: int | None = None

    def push_if_free(self, slot: Slot, now: float) -> None:
        if slot.eligible(now) and not slot.in_heap:
            slot.in_heap = True
            heapq.heappush(self.free_heap, (slot.order_key, slot))

    def first_free(self, now: float) -> Slot | None:
        while self.free_heap:
            slot = self.free_heap[0][1]
            if slot.eligible(now):
                return slot
            heapq.heappop(self.free_heap)
            slot.in_heap = False
        return None

    def rebuild_heap(self, now: float) -> None:
        for slot in self.slots.values():
            slot.in_heap = False
        self.free_heap = []
        for slot in self.slots.values():
            self.push_if_free(slot, now)

    def in_first_available_order(self) -> list[Slot]:
        return sorted(self.slots.values(), key=lambda slot: slot.order_key)

    def from_round_robin_cursor(self) -> Iterator[Slot]:
        ids = self.ids_in_order
        start = 0
        if self.round_robin_cursor is not None:
            start = bisect_right(ids, self.round_robin_cursor, key=itemgetter(0))
        for offset in range(len(ids)):
            yield self.slots[ids[(start + offset) % len(ids)][1]]


@dataclass(slots=True)
class ActiveLease:
    pool: PoolIndex
    slot: Slot
    expires_at: float


def order_key(proxy: Proxy) -> FirstAvailableKey:
    return (-proxy.checked_at.timestamp(), proxy.id.int)


def record_outcome(slot: Slot, report: OutcomeReport, now: float) -> float | None:
    """The outcome of a lease of ``slot``'s proxy, counted; when it starts the
    proxy's rest, the time it ends."""
    proxy, policy = slot.proxy, report.policy
    if report.latency_ms is not None:
        proxy.latency_ms = (
            report.latency_ms
            if proxy.latency_ms is None
            else (1 - LATENCY_SMOOTHING) * proxy.latency_ms
            + LATENCY_SMOOTHING * report.latency_ms
        )
    if report.outcome is LeaseOutcome.SUCCESS:
        proxy.successes += 1
        if proxy.consecutive_bans or proxy.consecutive_failures:
            proxy.consecutive_bans = proxy.consecutive_failures = 0
        if report.domain in slot.domain_cooldowns:
            slot.domain_cooldowns[report.domain] = (
                0,
                slot.domain_cooldowns[report.domain][1],
            )
        return None
    if report.outcome is LeaseOutcome.THROTTLED:
        until = now + policy.rest(report.rest_seconds)
        if report.domain is not None:
            strikes, resting = slot.domain_cooldowns.get(report.domain, (0, 0.0))
            slot.domain_cooldowns[report.domain] = (strikes, max(resting, until))
            return None
        if until <= slot.cooldown_until:
            return None
        slot.cooldown_until = until
        proxy.cooldown_until = datetime.fromtimestamp(until, timezone.utc)
        return until
    if report.outcome is LeaseOutcome.BAN:
        proxy.bans += 1
        if report.domain is not None:
            strikes = slot.domain_cooldowns.get(report.domain, (0, 0.0))[0] + 1
            until = now + policy.seconds(strikes, report.draw)
            slot.domain_cooldowns[report.domain] = (strikes, until)
            return None
        proxy.consecutive_bans += 1
        strikes = policy.strikes(LeaseOutcome.BAN, proxy.consecutive_bans)
    else:
        proxy.failures += 1
        proxy.consecutive_failures += 1
        strikes = policy.strikes(LeaseOutcome.FAILURE, proxy.consecutive_failures)
    if not strikes:
        return None
    slot.cooldown_until = now + policy.seconds(strikes, report.draw)
    proxy.cooldown_until = datetime.fromtimestamp(slot.cooldown_until, timezone.utc)
    return slot.cooldown_until
