"""A stop ends the waits for a proxy at once, and hands their requests back.

Scrapy's graceful stop (Ctrl-C, ``CLOSESPIDER_*``, ``CloseSpider``) lets every
request already in the downloader finish, and a request waiting for a proxy in
our ``process_request`` is one of them: the stop waited for it up to
PHAROX_ACQUIRE_TIMEOUT. Dropping it instead would lose it from a JOBDIR crawl,
since the scheduler persists only what it still holds. So a request whose wait
a stop ended is returned from ``process_request`` as a copy, which the engine
puts back into the scheduler before the scheduler closes and writes its queue
to disk; a resumed crawl fetches it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from scrapy import signals
from scrapy.exceptions import IgnoreRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request
    from scrapy.core.engine import ExecutionEngine
    from scrapy.crawler import Crawler

REQUEUED_KEY = "pharox/acquire/requeued"


class StopWaiting(Exception):
    """The crawl began to stop while the request waited for a proxy."""


class HandBack:
    """Ends the waits for a proxy when a stop begins; hands their requests back."""

    def __init__(self, crawler: Crawler, stop_waiting: Callable[[], None]) -> None:
        assert crawler.stats is not None
        self.crawler = crawler
        self.stats = crawler.stats
        self.stop_waiting = stop_waiting
        self._handed_back: WeakSet[Request] = WeakSet()
        self._stopping = False
        self.stats.set_value(REQUEUED_KEY, 0)

    def watch(self, engine: ExecutionEngine) -> None:
        """End the waits the moment ``engine`` begins to close the spider."""
        # Scrapy sends no signal when a close begins: spider_closed comes only once
        # the downloader has drained, which is the wait to end. Every close goes
        # through ExecutionEngine.close_spider_async (Scrapy 2.14 and later),
        # looked up on the engine: Crawler.stop via engine.stop_async, the
        # CloseSpider extension, CloseSpider from a callback, MemoryUsage. So the
        # engine's own attribute, wrapped, hears of a close first. Checked with
        # Scrapy 2.15.2 and 2.19; without the method, waits end at spider_closed.
        close_spider_async = getattr(engine, "close_spider_async", None)
        if close_spider_async is None:
            return
        stop = self._stop

        @functools.wraps(close_spider_async)
        async def ending_waits_first(*args: Any, **kwargs: Any) -> None:
            stop()
            await close_spider_async(*args, **kwargs)

        engine.close_spider_async = ending_waits_first  # type: ignore[method-assign]

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            # Counted as the engine schedules them; connected only now, so the
            # crawl does not pay for it on every request.
            self.crawler.signals.connect(
                self._scheduled, signal=signals.request_scheduled
            )
        self.stop_waiting()

    def request_for(self, request: Request) -> Request:
        """What process_request returns for a request whose wait a stop ended:
        a copy to schedule again, let past the dupefilter that has seen it."""
        if request in self._handed_back:
            # Sent straight back to the downloader, not to the scheduler: a
            # request of engine.download_async (robots.txt, say), which cannot
            # outlive the crawl. Handing it back again would never end.
            raise IgnoreRequest("scrapy-pharox: the spider is closing")
        copy = request.replace(dont_filter=True)
        self._handed_back.add(copy)
        return copy

    def _scheduled(self, request: Request) -> None:
        if request in self._handed_back:
            self.stats.inc_value(REQUEUED_KEY)
