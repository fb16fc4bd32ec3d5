"""One crawler's leases: taken per request, each given back exactly once.

The middleware and the extension are thin adapters over the ``LeaseKeeper`` of
their crawler; it owns the manager, the leases out right now, the requests
waiting for a proxy, and the ``pharox/*`` stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal, get_args
from weakref import WeakKeyDictionary

from scrapy.exceptions import IgnoreRequest

from .bridge import Baton
from .callers import AcquireRequest, StorageCaller, Target
from .config import PharoxConfig
from .exceptions import PharoxError
from .fleet_wakeup import FleetWakeup
from .gateway_exits import GatewayExits
from .models import (
    Lease,
    LeaseOutcome,
    OutcomeReport,
    Paced,
)
from .release_retries import ReleaseRetries
from .renewal import LeaseRenewer
from .resting import RestingPools
from .routing import Routing
from .sessions import Sessions
from .stopping import StopWaiting
from .tally import StatsTally
from .waiting import WaitingLines

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

    from .manager import ProxyManager
    from .models import PoolStatsSnapshot

logger = logging.getLogger(__name__)

#: Requests waiting for a proxy look again at least this often, so leases freed by
#: expiry (or, without a fleet feed, by other processes) are seen; a release
#: wakes the longest waiter (``fleet_wakeup``).
MAX_RECHECK_SECONDS = 2.0
FIRST_RECHECK_SECONDS = 0.25

ReleaseReason = Literal["response", "exception", "closed"]
RELEASE_REASONS: tuple[ReleaseReason, ...] = get_args(ReleaseReason)
#: The stats key of each release reason, built once.
RELEASE_KEYS = {reason: f"pharox/release/{reason}" for reason in RELEASE_REASONS}
_OUTCOME_KEYS = {outcome: f"pharox/outcome/{outcome.value}" for outcome in LeaseOutcome}

_keepers: WeakKeyDictionary[Crawler, LeaseKeeper] = WeakKeyDictionary()


class LeaseKeeper:
    """Leases proxies for one crawler's requests and always gives them back."""

    def __init__(
        self,
        manager: ProxyManager,
        config: PharoxConfig,
        stats: StatsCollector,
        consumer: str,
        default_target: Target,
        caller: StorageCaller | None = None,
    ) -> None:
        self.manager = manager
        self.config = config
        self.stats = stats
        self.consumer = consumer
        self.default_target = default_target
        self.routing = Routing(config, consumer, default_target)
        self.report = self.routing.report  # a request's outcome report
        #: Every pool a request was routed to (the extension reports them).
        self.pools_used = self.routing.pools_used
        self._held: dict[int, Lease] = {}  # by lease.id.int: hashed in C
        self._lines = WaitingLines(MAX_RECHECK_SECONDS)
        self._fleet = FleetWakeup(manager.storage, self._wake_a_waiter)
        self.caller = caller or StorageCaller.for_manager(manager)
        self.tally = StatsTally(stats, {"pharox/leases/active": lambda: self.active})
        self.exits = GatewayExits(manager.storage, self.caller, self.tally)
        self.sessions = Sessions(self)
        self._renewer = LeaseRenewer(
            self._held, self.caller, config.lease_seconds, self.tally
        )
        self._retries = ReleaseRetries(self.caller, self.tally, self._wake_a_waiter)
        self._failed_at_close: list[str] = []
        self._close_problems: list[str] = []
        self._longest_wait_ms = 0
        self._closing = False
        self._stopping = False
        self._giving_back: set[asyncio.Task[None]] = set()
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []
        self._resting = RestingPools(self.pool_stats)
        for key in RELEASE_KEYS.values():
            stats.set_value(key, 0)
        for name in ("leased", "empty", "paced", "gave_up"):
            stats.set_value(f"pharox/acquire/{name}", 0)
        stats.set_value("pharox/leases/active", 0)
        stats.set_value("pharox/acquire/wait_ms/max", 0)

    @classmethod
    def for_crawler(cls, crawler: Crawler) -> LeaseKeeper:
        """The crawler's keeper, built (settings checked, proxies added) on first use.

        Raises NotConfigured when PHAROX_ENABLED is false.
        """
        keeper = _keepers.get(crawler)
        if keeper is None:
            from .crawl_setup import build_keeper  # it imports this module

            keeper = _keepers[crawler] = build_keeper(cls, crawler)
        return keeper

    # -- leasing -------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Leases out right now (a session's slot among them)."""
        return len(self._held) + self.sessions.bound

    @property
    def waiting(self) -> int:
        """Requests asleep until a proxy frees up."""
        return self._lines.sleepers

    async def lease_for(self, request: Request) -> Lease:
        """A lease for the request; IgnoreRequest when none frees up in time,
        StopWaiting once the crawl stops."""
        target = self.routing.target_of(request)
        acquire_request = self.routing.acquire_request(request, target)
        caller = self.caller
        started = time.monotonic()
        deadline = started + self.config.acquire_timeout
        recheck = FIRST_RECHECK_SECONDS
        sleeper = object()
        baton: Baton | None = None
        line = (target.pool, acquire_request.domain)
        lines = self._lines
        behind = lines.has_waiters(line)  # then it waits behind them
        in_line = False
        try:
            while True:
                self.check_open()
                paced: Paced | None = None
                if not behind:
                    if caller.inline:
                        lease = self._acquire_now(acquire_request)
                    else:
                        lease = await self._acquire(acquire_request)
                    if isinstance(lease, Lease):
                        self._record_wait(started)
                        self._resting.served(target.pool)
                        lease = self._hold(lease)
                        if self.exits.due(lease):
                            lease = await self.exits.renew_due(lease, self._held)
                        return lease
                    if lease is None:
                        self.tally.inc("pharox/acquire/empty")
                        await self._resting.missed(target.pool)
                    else:  # free proxies, each inside its reuse delay
                        self.tally.inc("pharox/acquire/paced")
                        paced = lease
                behind = False
                if not in_line:
                    in_line = True
                    lines.join(line)
                if baton is not None:
                    lines.pass_on(baton, sleeper, acquire_request)
                if self._stopping:  # the stop came while it looked: no sleep
                    raise StopWaiting
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._record_wait(started)
                    self.tally.inc("pharox/acquire/gave_up")
                    logger.warning(
                        "Dropped %s: no proxy of pool %r was free within "
                        "PHAROX_ACQUIRE_TIMEOUT (%ss)",
                        request,
                        target.pool,
                        self.config.acquire_timeout,
                    )
                    raise IgnoreRequest(
                        f"scrapy-pharox: no free proxy in pool {target.pool!r}"
                    )
                baton = await lines.sleep(
                    sleeper,
                    min(remaining, recheck),
                    started,
                    acquire_request,
                    line,
                    paced,
                )
                if baton is None and paced is None:
                    recheck = min(recheck * 2, MAX_RECHECK_SECONDS)
        finally:
            if in_line:
                lines.leave(line, sleeper)

    def check_open(self) -> None:
        """IgnoreRequest once the spider closes, StopWaiting once the crawl stops."""
        if self._closing:
            raise IgnoreRequest("scrapy-pharox: the spider is closing")
        if self._stopping:
            raise StopWaiting

    def _acquire_now(self, request: AcquireRequest) -> Lease | Paced | None:
        try:
            return self.caller.acquire_now(request)
        except PharoxError as exc:
            self._acquire_failed(exc)
            return None

    async def _acquire(self, request: AcquireRequest) -> Lease | Paced | None:
        try:
            lease = await self.caller.acquire(request)
        except PharoxError as exc:
            self._acquire_failed(exc)
            return None
        if isinstance(lease, Lease) and (self._closing or self._stopping):
            # Counted as leased, then released, so leased == released still holds.
            self._hold(lease)
            await self.release(lease, "closed")
            if self._closing:
                raise IgnoreRequest("scrapy-pharox: the spider is closing")
            raise StopWaiting
        return lease

    def _acquire_failed(self, exc: PharoxError) -> None:
        self.tally.inc("pharox/acquire/error")
        logger.warning("scrapy-pharox could not acquire a proxy: %s", exc)

    def _hold(self, lease: Lease) -> Lease:
        self._held[lease.id.int] = lease
        self.tally.inc("pharox/acquire/leased")
        return lease

    def _record_wait(self, started: float) -> None:
        waited_ms = int((time.monotonic() - started) * 1000)
        if waited_ms > self._longest_wait_ms:
            self._longest_wait_ms = waited_ms
            self.stats.max_value("pharox/acquire/wait_ms/max", waited_ms)

    def holds(self, lease: Lease) -> bool:
        """True while this keeper still holds the lease."""
        return lease.id.int in self._held

    async def release(
        self, lease: Lease, reason: ReleaseReason, report: OutcomeReport | None = None
    ) -> bool:
        """Give a held lease back, counting why; False when it was not held."""
        if self._held.pop(lease.id.int, None) is None:
            return False
        self.tally.inc(RELEASE_KEYS[reason])
        if report is not None:
            self.tally.inc(_OUTCOME_KEYS[report.outcome])
        if self.caller.inline:
            self._give_back_now(lease, report)
        elif self.caller.in_background():
            # The response need not wait for the database: its release goes on
            # in a task of its own (awaited at spider close), and the request
            # does not leave Scrapy's fast path for a suspended middleware.
            task = asyncio.get_running_loop().create_task(
                self._give_back(lease, report)
            )
            self._giving_back.add(task)
            task.add_done_callback(self._given_back)
        else:
            await self._give_back(lease, report)
        return True

    def _given_back(self, task: asyncio.Task[None]) -> None:
        self._giving_back.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # Not a storage error (_give_back handles those): a bug, say. No request
        # waits on this task, so it is told here; the lease expires on its own.
        self.tally.inc("pharox/release/error")
        logger.error(
            "scrapy-pharox could not release a lease", exc_info=task.exception()
        )

    def _give_back_now(self, lease: Lease, report: OutcomeReport | None) -> None:
        if report is not None and self.exits.burned(lease, report):
            report = self.exits.renew_burned_now(lease, report)
        try:
            self.caller.release_now(lease, report)
        except PharoxError as exc:
            self._release_failed(lease, report, exc)
            return
        self._wake_a_waiter(lease.pool_name)

    async def _give_back(self, lease: Lease, report: OutcomeReport | None) -> None:
        if report is not None and self.exits.burned(lease, report):
            report = await self.exits.renew_burned(lease, report)
        try:
            await self.caller.release(lease, report)
        except PharoxError as exc:
            self._release_failed(lease, report, exc)
            return
        # With the feed live its notice wakes one, ours too (none when the
        # release freed nothing a waiter lacked).
        if not self._fleet.live:
            self._wake_a_waiter(lease.pool_name)

    def _release_failed(
        self, lease: Lease, report: OutcomeReport | None, exc: PharoxError
    ) -> None:
        self.tally.inc("pharox/release/error")
        if self._closing:  # told once, in the close's warning
            self._failed_at_close.append(str(exc))
            return
        # The crawl goes on; the release is tried again in the background.
        logger.warning("scrapy-pharox could not release a lease: %s; trying again", exc)
        self._retries.add(lease, report)

    def _wake_a_waiter(self, pool_name: str | None = None) -> None:
        """Wake the longest waiter for the pool (for any, without a name)."""
        self._lines.wake_for(pool_name)

    def wake_waiters(self) -> None:
        """Proxies joined a pool: every request waiting looks again now."""
        self._lines.wake_all()

    def stop_waiting(self) -> None:
        """The crawl stops: every request waiting for a proxy stops now
        (``lease_for`` raises StopWaiting), and no lease is taken any more."""
        self._stopping = True
        self._lines.wake_all()
        self.sessions.wake_all()

    def add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` at spider close, once every lease is back."""
        self._close_hooks.append(hook)

    def spider_opened(self, spider: Spider) -> None:
        """Start renewing the leases of requests still downloading, and
        hearing of the fleet's releases."""
        self._renewer.start()
        self.sessions.start()
        self._fleet.start()

    async def spider_closed(self, spider: Spider) -> None:
        """Release whatever is still held, wake every waiter, run the close hooks."""
        self._closing = True
        self._renewer.stop()
        self.sessions.stop()
        self._lines.wake_all()
        await self.sessions.park_all()
        for lease in list(self._held.values()):
            await self.release(lease, "closed")
        while self._giving_back:  # their failures are told by _given_back
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        await self._fleet.stop()
        left = self._retries.close()
        self.flush_stats()
        if self._failed_at_close or left:
            self.close_problem(
                f"{len(self._failed_at_close) + left} lease(s) not given back, "
                "reclaimed by the storage when they expire"
                + (f" ({self._failed_at_close[-1]})" if self._failed_at_close else "")
            )
        for hook in self._close_hooks:
            try:
                await hook()
            except PharoxError as exc:
                self.close_problem(str(exc))
        if self._close_problems:
            logger.warning(
                "scrapy-pharox closed with its storage failing: %s",
                "; ".join(self._close_problems),
            )

    def close_problem(self, problem: str) -> None:
        """Tell ``problem`` in the one warning of the close, not on its own."""
        self._close_problems.append(problem)

    def flush_stats(self) -> None:
        """Put the ``pharox/*`` counts into Scrapy's stats now (they otherwise
        follow within ``tally.FLUSH_SECONDS``)."""
        self.tally.flush()

    async def pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        """A pool's counts, read off the reactor thread when storage does I/O."""
        return await self.caller.call(self.manager.storage.get_pool_stats, pool_name)

    def shutdown(self) -> None:
        """Free the storage and worker threads once the crawl is over."""
        self._fleet.stop_now()
        self.caller.shutdown()
        self.manager.storage.close()
