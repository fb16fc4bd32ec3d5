"""The storage contract every adapter honours, documented once."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import datetime
from functools import partial
from typing import ClassVar, TypedDict
from uuid import UUID

from ..durations import MAX_SECONDS, check_seconds
from ..exceptions import (
    InvalidArgumentError,
    InvalidLeaseError,
    ProxyUnavailableError,
)
from ..models import (
    DomainCooldown,
    Lease,
    OutcomeReport,
    Paced,
    PoolStatsSnapshot,
    Proxy,
    ProxyFilters,
    ProxyPool,
    ProxyStatus,
    SelectorStrategy,
)
from .identities import IdentityStorage
from .sessions import SessionStorage
from .sources import SourceStorage

#: The longest lease a storage takes (``durations.MAX_SECONDS``, seven days).
MAX_LEASE_SECONDS = MAX_SECONDS


class ReuseKeyword(TypedDict, total=False):
    reuse_delay: float


def reuse_keyword(reuse_delay: float) -> ReuseKeyword:
    """The ``reuse_delay`` keyword of an acquire, or none for no delay: an
    adapter written before reuse delays takes every acquire without one."""
    return {"reuse_delay": reuse_delay} if reuse_delay else {}


def check_lease_seconds(duration_seconds: float) -> float:
    """The lease duration as a float; InvalidLeaseError, before any I/O, for one
    that is not a positive number of at most ``MAX_LEASE_SECONDS``."""
    # check_seconds' own first test, here too: every acquire passes here twice
    # (manager and storage), and the call with keywords costs more than the test.
    kind = type(duration_seconds)
    if (kind is float or kind is int) and 0 < duration_seconds <= MAX_LEASE_SECONDS:
        return float(duration_seconds)
    return check_seconds(duration_seconds, "duration_seconds", error=InvalidLeaseError)


# How often the composed acquire tries again when another worker took the proxy
# between find and lease.
_COMPOSED_ACQUIRE_ATTEMPTS = 5


class IStorage(SessionStorage, SourceStorage, IdentityStorage, ABC):
    """Where pools, proxies, consumers, leases and sessions live (the session
    part of the contract is documented on ``SessionStorage``, the live lists'
    on ``SourceStorage``, gateway exits' on ``IdentityStorage``).

    Eligible proxies are ACTIVE, have a free slot (``current_leases <
    max_concurrency``, or no limit), are not cooling down (``cooldown_until`` unset
    or past; with a target ``domain``, no cooldown for that domain either) and
    match the filters. Selectors order them:
    FIRST_AVAILABLE by ``checked_at`` newest first then id; LEAST_USED by fewest
    active leases, then ``checked_at`` oldest first, then id; ROUND_ROBIN by id,
    starting after the proxy it handed out last, a cursor kept per pool in the
    storage so every manager on it shares one cycle.

    Reuse delay: an acquire for a ``domain`` with ``reuse_delay`` seconds passes
    over proxies leased for that domain, by an acquire with a reuse delay, less
    than ``reuse_delay`` ago (by the storage's clock), and marks the proxy it
    leases as leased for that domain now. When free proxies exist but every one
    is inside its delay, it returns ``Paced`` (falsy, as None) with the seconds
    until the first comes out.
    """

    #: True when calls wait on I/O (a database): callers on an event loop run
    #: them in a worker thread. The in-memory adapter answers inline.
    blocking_io: ClassVar[bool] = True

    @abstractmethod
    def find_available_proxy(
        self,
        pool_name: str,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Proxy | None:
        """The eligible proxy the selector picks, or None (unknown pool included)."""

    @abstractmethod
    def create_lease(
        self, proxy: Proxy, consumer_name: str, duration_seconds: float
    ) -> Lease:
        """Lease one slot of ``proxy``; ProxyUnavailableError when none is free."""

    @abstractmethod
    def ensure_consumer(self, consumer_name: str) -> UUID:
        """The id of the consumer with that name, registering it on first use."""

    @abstractmethod
    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        """Give the lease's slot back; True when this call released it.

        Fenced by lease id and status: releasing a lease twice, or one that
        expired and was reclaimed, changes nothing and returns False.

        With a report, in the same step: a latency it gives, whatever the
        outcome, feeds ``latency_ms`` (a moving average, weight
        ``LATENCY_SMOOTHING``); a success counts in ``successes`` and resets both
        consecutive counters; a ban counts in ``bans`` and
        ``consecutive_bans`` and sets ``cooldown_until`` to now plus
        ``policy.seconds(consecutive_bans, draw)``; a failure counts in
        ``failures`` and ``consecutive_failures`` and cools the proxy once
        ``policy.strikes`` says so. With ``report.domain`` set, a ban's counters
        and cooldown are those of that (proxy, domain) pair instead, and a success
        resets that pair's consecutive bans. A throttled outcome counts nothing
        and strikes nothing: the (proxy, domain) pair, or without a domain the
        proxy, rests ``policy.rest(report.rest_seconds)`` from now, unless it
        already rests longer. A release that changed nothing
        records nothing.
        """

    @abstractmethod
    def extend_lease(self, lease: Lease, duration_seconds: float) -> datetime | None:
        """Make the lease expire ``duration_seconds`` from now (the storage's
        clock); its new expiry, or None when it no longer holds its slot.

        Fenced as a release is: a lease released, reclaimed, or past its expiry
        is not extended (its slot may be another's by now), and changes
        nothing. A bad duration raises InvalidLeaseError before any I/O.
        """

    @abstractmethod
    def set_proxy_status(
        self,
        proxy_id: UUID,
        status: ProxyStatus,
        *,
        latency_ms: float | None = None,
        checked: bool = False,
        reset_cooldown: bool = False,
    ) -> Proxy:
        """Set a proxy's status and return it; ProxyNotFoundError if unknown.

        ``checked`` stamps ``checked_at`` with now (a health check); a latency is
        stored as the proxy's ``latency_ms``; ``reset_cooldown`` ends any cooldown
        (of the proxy and of its domains) and zeroes the consecutive counters.
        """

    @abstractmethod
    def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]:
        """The (proxy, domain) cooldowns of a pool still in force."""

    @abstractmethod
    def cleanup_expired_leases(self) -> int:
        """Release every active lease past its expiry; return how many."""

    @abstractmethod
    def get_pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        """Counts of the pool now, or None for an unknown pool.

        ``available_proxies`` are ACTIVE, not cooling and with a free slot;
        ``cooling_proxies`` are ACTIVE proxies in a (proxy-wide) cooldown.
        """

    @abstractmethod
    def add_pool(self, pool: ProxyPool) -> ProxyPool:
        """Store a pool; a pool of the same name already there is returned as is."""

    @abstractmethod
    def add_proxy(self, proxy: Proxy) -> Proxy:
        """Store a proxy in its pool and return the stored one.

        Idempotent: a proxy with the same id, or the same protocol, host, port and
        user in that pool, is returned unchanged. PoolNotFoundError when the pool
        does not exist.
        """

    @abstractmethod
    def list_pools(self) -> list[ProxyPool]:
        """Every pool, by name."""

    @abstractmethod
    def list_proxies(self, pool_name: str) -> list[Proxy]:
        """The proxies of a pool with their current lease counts (empty if unknown)."""

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
        """Reclaim expired leases, pick an eligible proxy and lease it, or None
        (``Paced`` with a reuse delay, see the class).

        This default composes the primitives above; adapters override it with one
        atomic step, which the manager always calls. It knows no reuse delays.
        """
        if reuse_delay:
            raise InvalidArgumentError(
                f"{type(self).__name__} has no reuse delays: "
                f"reuse_delay must be 0, got {reuse_delay!r}"
            )
        self.ensure_consumer(consumer_name)
        self.cleanup_expired_leases()
        for _ in range(_COMPOSED_ACQUIRE_ATTEMPTS):
            proxy = self.find_available_proxy(pool_name, filters, selector, domain)
            if proxy is None:
                return None
            try:
                return self.create_lease(proxy, consumer_name, duration_seconds)
            except ProxyUnavailableError:
                continue
        return None

    @property
    def native_async(self) -> bool:
        """True when ``acquire_async``, ``release_lease_async`` and
        ``extend_lease_async`` wait on the running asyncio loop itself; by
        default they take a worker thread."""
        return False

    async def acquire_async(
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
        """``acquire`` for a coroutine: it never blocks the running loop."""
        return await asyncio.to_thread(
            partial(
                self.acquire,
                pool_name,
                consumer_name,
                duration_seconds,
                filters,
                selector,
                domain,
                **reuse_keyword(reuse_delay),
            )
        )

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        """``release_lease`` for a coroutine: it never blocks the running loop."""
        return await asyncio.to_thread(self.release_lease, lease, report)

    async def extend_lease_async(
        self, lease: Lease, duration_seconds: float
    ) -> datetime | None:
        """``extend_lease`` for a coroutine: it never blocks the running loop."""
        return await asyncio.to_thread(self.extend_lease, lease, duration_seconds)

    def release_feed(self) -> ReleaseFeed | None:
        """A new feed of releases anywhere in the fleet, or None when the
        storage has none: waiters in other processes then look again on their
        own (polling)."""
        return None

    def close(self) -> None:
        """Free connections and threads the adapter holds."""


class ReleaseFeed(ABC):
    """The pools of leases released anywhere on a storage, told as they commit:
    at least every release that takes a full proxy back under its limit (the
    others free nothing a waiter lacked; a feed may tell them too).

    Opened and read on one asyncio loop; a lost connection raises StorageError
    (open a new feed later). Notices are hints: one may be missed while the
    feed is down, so waiters still look again now and then.
    """

    @abstractmethod
    async def open(self) -> None:
        """Start listening: the releases that commit after this are told."""

    @abstractmethod
    async def next_release(self) -> str | None:
        """The pool name of the next release (waits for it); None for a
        feed that cannot tell the pool."""

    @abstractmethod
    async def close(self) -> None:
        """Stop listening and free the connection (idempotent, never raises)."""
