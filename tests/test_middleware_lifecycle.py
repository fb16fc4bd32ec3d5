"""The reactor never waits on storage, and no lease outlives its crawl."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.http import Response

from crawl_support import (
    LinkSpider,
    assert_every_lease_released,
    crawl,
    stats_of,
)
from scrapy_pharox import (
    InMemoryStorage,
    Lease,
    OutcomeReport,
    ProxyFilters,
    SelectorStrategy,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl

STORAGE_DELAY = 0.2


class SlowStorage(InMemoryStorage):
    """In-memory storage behaving like a far-away database: 200 ms a call."""

    blocking_io = True
    instances: ClassVar[list[SlowStorage]] = []

    def __init__(self) -> None:
        super().__init__()
        self.calls_in_flight = 0
        self.most_calls_at_once = 0
        self._count_lock = threading.Lock()
        SlowStorage.instances.append(self)

    def _slowly(self) -> None:
        with self._count_lock:
            self.calls_in_flight += 1
            self.most_calls_at_once = max(self.most_calls_at_once, self.calls_in_flight)
        time.sleep(STORAGE_DELAY)
        with self._count_lock:
            self.calls_in_flight -= 1

    def acquire(
        self,
        pool_name: str,
        consumer_name: str,
        duration_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        domain: str | None = None,
    ) -> Lease | None:
        self._slowly()
        return super().acquire(
            pool_name, consumer_name, duration_seconds, filters, selector, domain
        )

    def release_lease(self, lease: Lease, report: OutcomeReport | None = None) -> bool:
        self._slowly()
        return super().release_lease(lease, report)


@pytest_twisted.inlineCallbacks
def test_a_slow_storage_runs_beside_the_downloads_not_in_front_of_them(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(4)]
    SlowStorage.instances.clear()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_STORAGE": f"{__name__}.SlowStorage",
            "PHAROX_PROXIES": [proxy.url for proxy in proxies],
        },
        start_url=site.url + "/",
    )
    (storage,) = SlowStorage.instances
    # Calls blocking the reactor could never overlap: these ran in threads.
    assert storage.most_calls_at_once >= 2
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert_every_lease_released(stats_of(crawler))


@pytest.mark.parametrize(
    "storage_kind", ["memory", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
@pytest_twisted.inlineCallbacks
def test_closing_with_requests_in_flight_leaves_no_lease_behind(
    start_proxy: Callable[..., ForwardProxy],
    storage_kind: str,
    request: pytest.FixtureRequest,
) -> Any:
    storage_url = (
        request.getfixturevalue("postgresql_url")
        if storage_kind == "postgresql"
        else "memory://"
    )
    proxies = [start_proxy() for _ in range(3)]
    with TargetSite(pages=30, delay=0.5) as slow_site:
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_STORAGE_URL": storage_url,
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "CLOSESPIDER_PAGECOUNT": 2,
                "CONCURRENT_REQUESTS": 16,
                "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
            },
            start_url=slow_site.url + "/",
        )
    stats = stats_of(crawler)
    assert stats["finish_reason"] == "closespider_pagecount"
    assert stats["pharox/acquire/leased"] > 2
    assert stats["pharox/pool/default/total_leases"] == 0
    assert_every_lease_released(stats)


class AnswerRootWithAFreshRequest:
    """A middleware after ours that turns the first response into a new request,
    so our process_response never sees it and the lease stays out."""

    answered = False

    def process_response(
        self,
        request: scrapy.Request,
        response: Response,
        spider: scrapy.Spider | None = None,
    ) -> Response | scrapy.Request:
        if AnswerRootWithAFreshRequest.answered:
            return response
        AnswerRootWithAFreshRequest.answered = True
        return scrapy.Request(request.url + "page/1", meta={"proxy": None})


@pytest_twisted.inlineCallbacks
def test_a_lease_still_out_at_spider_close_is_released_then(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    AnswerRootWithAFreshRequest.answered = False
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [proxy.url],
            "PHAROX_PROXY_MAX_CONCURRENCY": 0,
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.AnswerRootWithAFreshRequest": 745},
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/release/closed"] == 1
    assert stats["pharox/pool/default/total_leases"] == 0
    assert_every_lease_released(stats)


@pytest.mark.parametrize(
    "storage_url", ["memory://", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
@pytest_twisted.inlineCallbacks
def test_a_request_downloading_past_its_lease_keeps_its_exclusive_proxy(
    start_proxy: Callable[..., ForwardProxy],
    storage_url: str,
    request: pytest.FixtureRequest,
) -> Any:
    if storage_url == "postgresql":
        storage_url = request.getfixturevalue("postgresql_url")
    proxy = start_proxy()
    with TargetSite(pages=2, delay=2.0) as slow_site:  # 3 pages, 2 s each
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_STORAGE_URL": storage_url,
                "PHAROX_PROXIES": [proxy.url],
                "PHAROX_LEASE_SECONDS": 0.5,  # shorter than every download
            },
            start_url=slow_site.url + "/",
        )
    stats = stats_of(crawler)
    assert len(crawler.spider.seen) == 3
    assert proxy.max_active_requests == 1  # never two requests on it at once
    assert stats["pharox/leases/renewed"] >= 3
    assert "pharox/leases/lost" not in stats
    assert_every_lease_released(stats)
