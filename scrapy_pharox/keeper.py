"""One crawler's leases: taken per request, each given back exactly once.

The middleware and the extension are thin adapters over the ``LeaseKeeper`` of
their crawler; it owns the manager, the leases out right now, the requests
waiting for a proxy, and the ``pharox/*`` stats.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args
from weakref import WeakKeyDictionary

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import load_object

from .bridge import Baton, Offloader, Wakeup, running_loop
from .config import PharoxConfig, PharoxSettingError, parse_filters, parse_selector
from .exceptions import PharoxError
from .manager import ProxyManager
from .models import (
    Lease,
    LeaseOutcome,
    OutcomeReport,
    ProxyFilters,
    ProxyPool,
    ProxyProtocol,
    SelectorStrategy,
    build_trusted,
)
from .storage import IStorage, open_storage
from .tally import StatsTally

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

    from .models import PoolStatsSnapshot

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Requests waiting for a proxy look again at least this often, so leases freed by
#: other processes or by expiry are seen; a release in this process wakes them.
MAX_RECHECK_SECONDS = 2.0
FIRST_RECHECK_SECONDS = 0.25
#: How often, at most, a pool that gives no lease is checked for "all cooling".
RESTING_CHECK_SECONDS = 5.0

ReleaseReason = Literal["response", "exception", "closed"]
RELEASE_REASONS: tuple[ReleaseReason, ...] = get_args(ReleaseReason)
#: The stats key of each release reason, built once.
RELEASE_KEYS = {reason: f"pharox/release/{reason}" for reason in RELEASE_REASONS}
_OUTCOME_KEYS = {outcome: f"pharox/outcome/{outcome.value}" for outcome in LeaseOutcome}

#: The meta keys that route one request elsewhere than the spider's default.
TARGET_META_KEYS = frozenset({"pharox_pool", "pharox_filters", "pharox_selector"})

_keepers: WeakKeyDictionary[Crawler, LeaseKeeper] = WeakKeyDictionary()


@dataclass(frozen=True)
class Target:
    """Where a request's proxy comes from."""

    pool: str
    filters: ProxyFilters | None
    selector: SelectorStrategy


class LeaseKeeper:
    """Leases proxies for one crawler's requests and always gives them back."""

    def __init__(
        self,
        manager: ProxyManager,
        config: PharoxConfig,
        stats: StatsCollector,
        consumer: str,
        default_target: Target,
    ) -> None:
        self.manager = manager
        self.config = config
        self.stats = stats
        self.consumer = consumer
        self.default_target = default_target
        self.pools_used: set[str] = {default_target.pool}
        self._default_filters = self._with_protocols(default_target.filters)
        self._held: dict[int, Lease] = {}  # by lease.id.int: hashed in C
        self._wakeup = Wakeup()
        self._offloader = Offloader(threads=8) if manager.storage.blocking_io else None
        self._native_async = manager.storage.native_async
        # Storage that neither does I/O nor waits on a loop (memory) is called
        # right here, without a coroutine around each call: the per-request path.
        self._inline = self._offloader is None and not self._native_async
        self._tally = StatsTally(stats, {"pharox/leases/active": lambda: self.active})
        self._longest_wait_ms = 0
        self._closing = False
        self._giving_back: set[asyncio.Task[None]] = set()
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []
        self._resting_pools: set[str] = set()
        self._resting_checked: dict[str, float] = {}
        for key in RELEASE_KEYS.values():
            stats.set_value(key, 0)
        for name in ("leased", "empty", "gave_up"):
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
            keeper = _keepers[crawler] = cls._build(crawler)
        return keeper

    @classmethod
    def _build(cls, crawler: Crawler) -> LeaseKeeper:
        config = PharoxConfig.from_settings(crawler.settings)
        if not config.enabled:
            raise NotConfigured("PHAROX_ENABLED is false")
        assert crawler.stats is not None
        for name in config.unknown_settings:
            logger.warning("Unknown setting %s: scrapy-pharox ignores it", name)
        download_timeout = crawler.settings.getfloat("DOWNLOAD_TIMEOUT")
        if config.lease_seconds <= download_timeout:
            logger.warning(
                "PHAROX_LEASE_SECONDS (%s) is not above DOWNLOAD_TIMEOUT (%s): a "
                "lease may expire while its request is still downloading",
                config.lease_seconds,
                download_timeout,
            )
        spider = crawler.spider
        spider_name = spider.name if spider is not None else "spider"
        default_target = Target(
            pool=_spider_setting(spider, "pharox_pool", config.pool),
            filters=parse_filters(
                "spider attribute pharox_filters",
                _spider_setting(spider, "pharox_filters", config.filters),
            ),
            selector=parse_selector(
                "spider attribute pharox_selector",
                _spider_setting(spider, "pharox_selector", config.selector),
            ),
        )
        consumer = (
            config.consumer or f"{crawler.settings.get('BOT_NAME')}:{spider_name}"
        )
        # Opened last, once every setting and spider attribute is known good.
        storage = _open_configured_storage(config)
        keeper = cls(
            ProxyManager(storage), config, crawler.stats, consumer, default_target
        )
        try:
            keeper._load_proxies()
        except BaseException:
            keeper.shutdown()  # the crawl stops here: free the storage it opened
            raise
        crawler.signals.connect(keeper.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(keeper.shutdown, signal=signals.engine_stopped)
        return keeper

    def _load_proxies(self) -> None:
        # Runs once in from_crawler, before the crawl starts: blocking is fine here.
        storage = self.manager.storage
        if self.config.proxies:
            pool = storage.add_pool(ProxyPool(name=self.config.pool))
            for proxy in self.config.proxies:
                storage.add_proxy(proxy.model_copy(update={"pool_id": pool.id}))
        for pool_name in sorted({self.config.pool, self.default_target.pool}):
            proxies = storage.list_proxies(pool_name)
            usable = [p for p in proxies if p.protocol in self.config.protocols]
            if not proxies:
                logger.warning(
                    "Pool %r has no proxies yet: requests wait up to "
                    "PHAROX_ACQUIRE_TIMEOUT (%ss) for one",
                    pool_name,
                    self.config.acquire_timeout,
                )
            elif len(usable) < len(proxies):
                skipped = sorted(
                    {p.protocol.value for p in proxies}
                    - {protocol.value for protocol in self.config.protocols}
                )
                logger.warning(
                    "Pool %r holds %d proxies speaking %s, which the download "
                    "handler cannot use (PHAROX_PROTOCOLS): they are never leased",
                    pool_name,
                    len(proxies) - len(usable),
                    ", ".join(skipped),
                )
            logger.info(
                "scrapy-pharox: pool %r has %d usable proxies (storage %s)",
                pool_name,
                len(usable),
                storage.__class__.__name__,
            )

    # -- leasing -------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Leases out right now."""
        return len(self._held)

    @property
    def waiting(self) -> int:
        """Requests asleep until a proxy frees up."""
        return self._wakeup.sleepers

    def target_of(self, request: Request) -> Target:
        """The pool, filters and selector for one request (meta overrides spider)."""
        meta = request.meta
        default = self.default_target
        if TARGET_META_KEYS.isdisjoint(meta):
            return default
        target = Target(
            pool=meta.get("pharox_pool") or default.pool,
            filters=(
                parse_filters("request.meta['pharox_filters']", meta["pharox_filters"])
                if "pharox_filters" in meta
                else default.filters
            ),
            selector=(
                parse_selector(
                    "request.meta['pharox_selector']", meta["pharox_selector"]
                )
                if meta.get("pharox_selector")
                else default.selector
            ),
        )
        self.pools_used.add(target.pool)
        return target

    async def lease_for(self, request: Request) -> Lease:
        """A lease for the request; IgnoreRequest when none frees up in time."""
        target = self.target_of(request)
        filters = (
            self._default_filters
            if target is self.default_target
            else self._with_protocols(target.filters)
        )
        started = time.monotonic()
        deadline = started + self.config.acquire_timeout
        recheck = FIRST_RECHECK_SECONDS
        sleeper = object()
        baton: Baton | None = None
        while True:
            if self._closing:
                raise IgnoreRequest("scrapy-pharox: the spider is closing")
            acquire_args = (
                target.pool,
                self.consumer,
                self.config.lease_seconds,
                filters,
                target.selector,
                self.domain_of(request),
            )
            if self._inline:
                lease = self._acquire_now(acquire_args)
            else:
                lease = await self._acquire(acquire_args)
            if lease is not None:
                self._record_wait(started)
                if target.pool in self._resting_pools:
                    self._resting_pools.discard(target.pool)
                    logger.info(
                        "A proxy of pool %r is back from its cooldown", target.pool
                    )
                return self._hold(lease)
            self._tally.inc("pharox/acquire/empty")
            await self._notice_resting_pool(target.pool)
            if baton is not None:
                # Woken by a release we could not use: let the next waiter try.
                baton.add(sleeper)
                self._wakeup.wake_one(baton)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._record_wait(started)
                self._tally.inc("pharox/acquire/gave_up")
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
            baton = await self._wakeup.sleep(sleeper, min(remaining, recheck))
            if baton is None:
                recheck = min(recheck * 2, MAX_RECHECK_SECONDS)

    def _acquire_now(self, acquire_args: tuple[Any, ...]) -> Lease | None:
        try:
            return self.manager.acquire_proxy(*acquire_args)
        except PharoxError as exc:
            self._acquire_failed(exc)
            return None

    async def _acquire(self, acquire_args: tuple[Any, ...]) -> Lease | None:
        try:
            if self._on_loop():
                lease = await self.manager.acquire_proxy_async(*acquire_args)
            else:
                lease = await self._call(self.manager.acquire_proxy, *acquire_args)
        except PharoxError as exc:
            self._acquire_failed(exc)
            return None
        if lease is not None and self._closing:
            # Counted as leased, then released, so leased == released still holds.
            self._hold(lease)
            await self.release(lease, "closed")
            raise IgnoreRequest("scrapy-pharox: the spider is closing")
        return lease

    def _acquire_failed(self, exc: PharoxError) -> None:
        self._tally.inc("pharox/acquire/error")
        logger.warning("scrapy-pharox could not acquire a proxy: %s", exc)

    def _hold(self, lease: Lease) -> Lease:
        self._held[lease.id.int] = lease
        self._tally.inc("pharox/acquire/leased")
        return lease

    def _record_wait(self, started: float) -> None:
        waited_ms = int((time.monotonic() - started) * 1000)
        if waited_ms > self._longest_wait_ms:
            self._longest_wait_ms = waited_ms
            self.stats.max_value("pharox/acquire/wait_ms/max", waited_ms)

    def _with_protocols(self, filters: ProxyFilters | None) -> ProxyFilters | None:
        protocols = sorted(self.config.protocols, key=lambda protocol: protocol.value)
        if len(protocols) == len(ProxyProtocol):
            return filters
        return ProxyFilters(
            any_of=[ProxyFilters(protocol=protocol) for protocol in protocols],
            all_of=[filters] if filters is not None else None,
        )

    def holds(self, lease: Lease) -> bool:
        """True while this keeper still holds the lease."""
        return lease.id.int in self._held

    async def _notice_resting_pool(self, pool_name: str) -> None:
        # Looked at most every few seconds per pool, and only while requests wait.
        now = time.monotonic()
        if pool_name in self._resting_pools or (
            now - self._resting_checked.get(pool_name, -RESTING_CHECK_SECONDS)
            < RESTING_CHECK_SECONDS
        ):
            return
        self._resting_checked[pool_name] = now
        try:
            snapshot = await self.pool_stats(pool_name)
        except PharoxError:
            return
        if snapshot and 0 < snapshot.active_proxies == snapshot.cooling_proxies:
            self._resting_pools.add(pool_name)
            logger.warning(
                "Every proxy of pool %r is cooling down after bans or failures: "
                "requests wait for the first one to come back",
                pool_name,
            )

    def domain_of(self, request: Request) -> str | None:
        """The domain bans are scoped to (PHAROX_BAN_SCOPE = "domain"), else None."""
        if self.config.ban_scope != "domain":
            return None
        return urlparse_cached(request).hostname

    def report(
        self, request: Request, outcome: LeaseOutcome, latency_ms: float | None = None
    ) -> OutcomeReport:
        """The outcome of a request's lease, as the storage records it.

        A latency below zero (the wall clock stepped back) counts as zero.
        """
        return build_trusted(
            OutcomeReport,
            {
                "outcome": outcome
                if isinstance(outcome, LeaseOutcome)
                else LeaseOutcome(outcome),
                "latency_ms": None if latency_ms is None else max(0.0, latency_ms),
                "domain": self.domain_of(request),
                "policy": self.config.cooldown,
                "draw": random.random(),
            },
        )

    async def release(
        self, lease: Lease, reason: ReleaseReason, report: OutcomeReport | None = None
    ) -> bool:
        """Give a held lease back, counting why; False when it was not held."""
        if self._held.pop(lease.id.int, None) is None:
            return False
        self._tally.inc(RELEASE_KEYS[reason])
        if report is not None:
            self._tally.inc(_OUTCOME_KEYS[report.outcome])
        if self._inline:
            self._give_back_now(lease, report)
        elif self._on_loop():
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
        self._tally.inc("pharox/release/error")
        logger.error(
            "scrapy-pharox could not release a lease", exc_info=task.exception()
        )

    def _give_back_now(self, lease: Lease, report: OutcomeReport | None) -> None:
        try:
            self.manager.release_proxy(lease, report)
        except PharoxError as exc:
            self._release_failed(exc)
        self._wake_a_waiter()

    async def _give_back(self, lease: Lease, report: OutcomeReport | None) -> None:
        try:
            if self._on_loop():
                await self.manager.release_proxy_async(lease, report)
            else:
                await self._call(self.manager.release_proxy, lease, report)
        except PharoxError as exc:
            self._release_failed(exc)
        self._wake_a_waiter()

    def _release_failed(self, exc: PharoxError) -> None:
        # The lease will expire on its own; the crawl goes on.
        self._tally.inc("pharox/release/error")
        logger.error("scrapy-pharox could not release a lease: %s", exc)

    def _wake_a_waiter(self) -> None:
        if self._wakeup.sleepers:
            self._wakeup.wake_one(set())

    def add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` at spider close, once every lease is back."""
        self._close_hooks.append(hook)

    async def spider_closed(self, spider: Spider) -> None:
        """Release whatever is still held, wake every waiter, run the close hooks."""
        self._closing = True
        self._wakeup.wake_all()
        for lease in list(self._held.values()):
            await self.release(lease, "closed")
        while self._giving_back:  # their failures are told by _given_back
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        self.flush_stats()
        for hook in self._close_hooks:
            await hook()

    def flush_stats(self) -> None:
        """Put the ``pharox/*`` counts into Scrapy's stats now (they otherwise
        follow within ``tally.FLUSH_SECONDS``)."""
        self._tally.flush()

    async def pool_stats(self, pool_name: str) -> PoolStatsSnapshot | None:
        """A pool's counts, read off the reactor thread when storage does I/O."""
        return await self._call(self.manager.storage.get_pool_stats, pool_name)

    def shutdown(self) -> None:
        """Free the storage and worker threads once the crawl is over."""
        if self._offloader is not None:
            self._offloader.shutdown()
        self.manager.storage.close()

    def _on_loop(self) -> bool:
        """Whether storage calls can wait on the running asyncio loop itself."""
        return self._native_async and running_loop() is not None

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        if self._offloader is None:
            return func(*args)
        return await self._offloader.run(func, *args)


def _open_configured_storage(config: PharoxConfig) -> IStorage:
    """PHAROX_STORAGE (an adapter, a factory or its import path), else the URL."""
    if config.storage is None:
        try:
            return open_storage(config.storage_url)
        except PharoxError as exc:
            raise PharoxSettingError(f"PHAROX_STORAGE_URL: {exc}") from None
    candidate = config.storage
    if isinstance(candidate, str):
        try:
            candidate = load_object(candidate)
        except (ImportError, NameError, ValueError) as exc:
            raise PharoxSettingError(f"PHAROX_STORAGE: {exc}") from None
    if not isinstance(candidate, IStorage) and callable(candidate):
        candidate = candidate()
    if not isinstance(candidate, IStorage):
        raise PharoxSettingError(
            f"PHAROX_STORAGE must be an IStorage, a factory of one or its import "
            f"path, got {config.storage!r}"
        )
    return candidate


def _spider_setting(spider: Spider | None, name: str, default: Any) -> Any:
    value = getattr(spider, name, None) if spider is not None else None
    return default if value is None else value
