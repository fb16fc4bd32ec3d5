"""A stop ends every wait for a proxy at once; the requests that waited go back
to the scheduler, so a JOBDIR crawl fetches them when it resumes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler, CrawlerRunner
from scrapy.http import Response
from twisted.internet.defer import Deferred, inlineCallbacks

from crawl_support import (
    BASE_SETTINGS,
    LinkSpider,
    assert_every_lease_released,
    crawl,
    stats_of,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = [
    pytest.mark.crawl,
    # Scrapy 2.15 (the oldest admitted) leaves its JOBDIR queue files open at close.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*requests.queue"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

#: Seconds the site takes for each page: 15 requests queued on one exclusive
#: proxy take some 22 s to go through it one by one.
PAGE_SECONDS = 1.5
PAGES = 20
#: One exclusive proxy, 16 requests at once: after the index, one downloads
#: and 15 wait for the proxy.
ONE_SLOW_PROXY: dict[str, Any] = {
    "CONCURRENT_REQUESTS": 16,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
    "PHAROX_ACQUIRE_TIMEOUT": 30,
}


class CtrlCAfterTwoPages(LinkSpider):
    """LinkSpider that stops the crawl once it has parsed the index and a page,
    the way Scrapy's SIGINT handler does: ``CrawlerRunner.stop`` from a reactor
    call."""

    def __init__(self, start_url: str, ctrl_c: Callable[[], Any], **kwargs: Any):
        super().__init__(start_url, **kwargs)
        self.ctrl_c = ctrl_c

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        yield from super().parse(response)
        if len(self.seen) == 2:
            from twisted.internet import reactor

            reactor.callLater(0, self.ctrl_c)


class TwoSitesCtrlCSoon(scrapy.Spider):
    """Asks for the index of two sites, each behind its robots.txt, and stops the
    crawl a second in: the first robots.txt request has the proxy, the second
    waits for it."""

    name = "two_sites"

    def __init__(self, start_urls: list[str], ctrl_c: Callable[[], Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.start_urls = start_urls
        self.ctrl_c = ctrl_c

    async def start(self) -> AsyncIterator[Any]:
        from twisted.internet import reactor

        reactor.callLater(1.0, self.ctrl_c)
        for url in self.start_urls:
            yield scrapy.Request(url)

    def parse(self, response: Response) -> None:
        pass


def crawl_with_ctrl_c(
    spider_class: type[scrapy.Spider], settings: dict[str, Any], **spider_kwargs: Any
) -> Deferred[Crawler]:
    runner = CrawlerRunner({**BASE_SETTINGS, **settings})
    crawler = runner.create_crawler(spider_class)
    # Through the runner, which stops only the crawlers it started.
    done: Deferred[Any] = runner.crawl(crawler, ctrl_c=runner.stop, **spider_kwargs)
    return done.addCallback(lambda _: crawler)


@inlineCallbacks
def crawl_two_slow_sites_with_ctrl_c(
    proxy: ForwardProxy,
) -> Generator[Deferred[Any], Any, Crawler]:
    """A crawl of two slow sites through one exclusive proxy, obeying robots.txt,
    that Ctrl-C stops while the second robots.txt request waits for the proxy."""
    with (
        TargetSite(pages=1, delay=3.0) as first,
        TargetSite(pages=1, delay=3.0) as second,
    ):
        crawler: Crawler = yield crawl_with_ctrl_c(
            TwoSitesCtrlCSoon,
            {**ONE_SLOW_PROXY, "PHAROX_PROXIES": [proxy.url], "ROBOTSTXT_OBEY": True},
            start_urls=[first.url + "/", second.url + "/"],
        )
    return crawler


def crawl_stopped_after_two_pages(
    stop: str, settings: dict[str, Any], start_url: str
) -> Deferred[Crawler]:
    """A LinkSpider crawl that ``stop`` ends once the index and a page are in."""
    if stop == "closespider":
        closing = {**settings, "CLOSESPIDER_PAGECOUNT": 2}
        return crawl(LinkSpider, closing, start_url=start_url)
    return crawl_with_ctrl_c(CtrlCAfterTwoPages, settings, start_url=start_url)


@pytest.mark.parametrize(
    ("stop", "finish_reason"),
    [("closespider", "closespider_pagecount"), ("ctrl_c", "shutdown")],
)
@pytest_twisted.inlineCallbacks
def test_a_stop_ends_the_waits_for_a_proxy_at_once(
    start_proxy: Callable[..., ForwardProxy], stop: str, finish_reason: str
) -> Any:
    proxy = start_proxy()
    with TargetSite(pages=PAGES, delay=PAGE_SECONDS) as slow_site:
        started = time.monotonic()
        crawler: Crawler = yield crawl_stopped_after_two_pages(
            stop,
            {**ONE_SLOW_PROXY, "PHAROX_PROXIES": [proxy.url]},
            start_url=slow_site.url + "/",
        )
        elapsed = time.monotonic() - started
    stats = stats_of(crawler)
    assert stats["finish_reason"] == finish_reason
    # Two pages and the one downloading at the stop: some 4.5 s, not 25 s.
    assert elapsed < 10
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_requests_waiting_for_a_proxy_at_a_stop_are_fetched_when_the_job_resumes(
    start_proxy: Callable[..., ForwardProxy], tmp_path: Path
) -> Any:
    proxy = start_proxy()
    settings = {
        **ONE_SLOW_PROXY,
        "PHAROX_PROXIES": [proxy.url],
        "JOBDIR": str(tmp_path / "job"),
        # Shorter than the 15 waiting requests take to go through the proxy one
        # by one, longer than any waits before the stop.
        "PHAROX_ACQUIRE_TIMEOUT": 6,
    }
    with TargetSite(pages=PAGES, delay=PAGE_SECONDS) as slow_site:
        start_url = slow_site.url + "/"
        stopped: Crawler = yield crawl_stopped_after_two_pages(
            "ctrl_c", settings, start_url
        )
        slow_site.delay = 0
        resumed: Crawler = yield crawl(LinkSpider, settings, start_url=start_url)
    fetched = Counter(urlsplit(request.path).path for request in slow_site.requests)
    every_page_once = {"/": 1} | {f"/page/{n}": 1 for n in range(1, PAGES + 1)}
    assert fetched == every_page_once
    assert stats_of(stopped)["finish_reason"] == "shutdown"
    assert_every_lease_released(stats_of(stopped))
    assert_every_lease_released(stats_of(resumed))


@pytest_twisted.inlineCallbacks
def test_a_robots_txt_request_waiting_for_a_proxy_does_not_hold_a_stop_up(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    # It is not the scheduler's: handed back, it comes straight back.
    started = time.monotonic()
    crawler: Crawler = yield crawl_two_slow_sites_with_ctrl_c(start_proxy())
    elapsed = time.monotonic() - started
    # The first robots.txt, 3 s; not four downloads one by one, 12 s.
    assert elapsed < 8
    assert_every_lease_released(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_the_requests_a_stop_hands_back_to_the_scheduler_count_as_requeued(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    crawler: Crawler = yield crawl_two_slow_sites_with_ctrl_c(start_proxy())
    stats = stats_of(crawler)
    # The two indexes; not the robots.txt request that waited, which is dropped.
    assert stats["pharox/acquire/requeued"] == 2
    assert stats["scheduler/enqueued"] == 4
