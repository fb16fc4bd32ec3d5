"""The stats extension: a periodic log line, and pool counts in the stats dump."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall

from .exceptions import PharoxError
from .keeper import RELEASE_KEYS, LeaseKeeper

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector
    from twisted.internet.defer import Deferred
    from typing_extensions import Self

logger = logging.getLogger(__name__)

SNAPSHOT_FIELDS = (
    "total_proxies",
    "active_proxies",
    "available_proxies",
    "leased_proxies",
    "total_leases",
    "cooling_proxies",
    "banned_proxies",
)


class PharoxStatsExtension:
    """Logs lease figures every PHAROX_STATS_INTERVAL seconds, like LogStats, and
    writes ``pharox/pool/<pool>/<field>`` into the stats when the spider closes.
    """

    def __init__(self, keeper: LeaseKeeper, stats: StatsCollector, interval: float):
        self.keeper = keeper
        self.stats = stats
        self.interval = interval
        self.multiplier = 60.0 / interval if interval else 0.0
        self.task: LoopingCall | None = None
        self._leased_before = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        keeper = LeaseKeeper.for_crawler(crawler)
        if crawler.stats is None:
            raise NotConfigured("scrapy-pharox needs a stats collector")
        extension = cls(keeper, crawler.stats, keeper.config.stats_interval)
        keeper.add_close_hook(extension.write_pool_snapshots)
        if extension.interval:
            crawler.signals.connect(
                extension.spider_opened, signal=signals.spider_opened
            )
        return extension

    def spider_opened(self, spider: Spider) -> None:
        self.task = LoopingCall(self.log)
        self.task.start(self.interval, now=False)

    def log(self) -> Deferred[None]:
        """Log one line of lease figures (returns when the pool counts are in)."""
        return deferred_from_coro(self._log())

    async def _log(self) -> None:
        self.keeper.flush_stats()
        leased = self.stats.get_value("pharox/acquire/leased", 0)
        released = sum(self.stats.get_value(key, 0) for key in RELEASE_KEYS.values())
        rate = (leased - self._leased_before) * self.multiplier
        self._leased_before = leased
        pools = []
        for pool_name in sorted(self.keeper.pools_used):
            try:
                snapshot = await self.keeper.pool_stats(pool_name)
            except PharoxError as exc:  # the line goes on, and says so
                pools = [f"storage unreachable ({exc})"]
                break
            if snapshot is not None:
                cooling = (
                    f", {snapshot.cooling_proxies} cooling down"
                    if snapshot.cooling_proxies
                    else ""
                )
                pools.append(
                    f"{pool_name} {snapshot.available_proxies}/"
                    f"{snapshot.total_proxies} available{cooling}"
                )
        logger.info(
            "Leases: %(leased)d (at %(rate)d leases/min), released %(released)d, "
            "active %(active)d, waiting %(waiting)d; pools: %(pools)s",
            {
                "leased": leased,
                "rate": rate,
                "released": released,
                "active": self.keeper.active,
                "waiting": self.keeper.waiting,
                "pools": ", ".join(pools) or "none",
            },
        )

    async def write_pool_snapshots(self) -> None:
        """Stop the log line; put each used pool's counts into the stats (left
        out, with ``pharox/pool/snapshot_error``, when the storage fails)."""
        if self.task is not None and self.task.running:
            self.task.stop()
        for pool_name in sorted(self.keeper.pools_used):
            try:
                snapshot = await self.keeper.pool_stats(pool_name)
            except PharoxError as exc:
                self.stats.set_value("pharox/pool/snapshot_error", 1)
                self.keeper.close_problem(f"no pool counts in the stats ({exc})")
                return
            if snapshot is None:
                continue
            for field in SNAPSHOT_FIELDS:
                self.stats.set_value(
                    f"pharox/pool/{pool_name}/{field}", getattr(snapshot, field)
                )
