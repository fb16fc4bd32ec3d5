"""Real crawls of a local site through local proxies, leased per request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from scrapy.crawler import Crawler

from crawl_support import (
    LinkSpider,
    assert_every_lease_released,
    crawl,
    stats_of,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite, free_port

pytestmark = [pytest.mark.crawl, pytest.mark.usefixtures("site")]

PAGES_AND_ROOT = 31


@pytest_twisted.inlineCallbacks
def test_every_page_is_crawled_through_a_leased_proxy(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(3)]
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [proxy.url for proxy in proxies]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert len({page["url"] for page in crawler.spider.seen}) == PAGES_AND_ROOT
    assert {request.via_proxy_port for request in site.requests} <= {
        proxy.port for proxy in proxies
    }
    assert sum(proxy.requests_count for proxy in proxies) == len(site.requests)
    assert stats["pharox/acquire/leased"] == PAGES_AND_ROOT
    assert stats["pharox/release/response"] == PAGES_AND_ROOT
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_pool_counts_are_in_the_stats_at_close(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [proxy.url for proxy in proxies]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/pool/default/total_proxies"] == 2
    assert stats["pharox/pool/default/available_proxies"] == 2
    assert stats["pharox/pool/default/leased_proxies"] == 0
    assert stats["pharox/pool/default/total_leases"] == 0


@pytest.mark.postgres
@pytest_twisted.inlineCallbacks
def test_a_crawl_on_postgresql_has_given_every_lease_back_when_its_pool_is_counted(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy], postgresql_url: str
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_STORAGE_URL": postgresql_url,
            "PHAROX_PROXIES": [proxy.url for proxy in proxies],
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/release/response"] == PAGES_AND_ROOT
    assert_every_lease_released(stats)
    # Releases run in the background on PostgreSQL: all done before the count.
    assert stats["pharox/pool/default/total_leases"] == 0
    assert stats["pharox/pool/default/available_proxies"] == 2
    assert max(proxy.max_active_requests for proxy in proxies) == 1


@pytest_twisted.inlineCallbacks
def test_the_middleware_and_extension_can_be_enabled_by_hand(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "ADDONS": {},
            "DOWNLOADER_MIDDLEWARES": {"scrapy_pharox.PharoxProxyMiddleware": 740},
            "EXTENSIONS": {"scrapy_pharox.PharoxStatsExtension": 500},
            "PHAROX_PROXIES": [proxy.url],
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert proxy.requests_count == PAGES_AND_ROOT
    assert stats["pharox/pool/default/total_proxies"] == 1
    assert_every_lease_released(stats)


@pytest.mark.parametrize(("max_concurrency", "exclusive"), [(1, True), (4, False)])
@pytest_twisted.inlineCallbacks
def test_exclusive_proxies_never_carry_two_requests_at_once(
    start_proxy: Callable[..., ForwardProxy], max_concurrency: int, exclusive: bool
) -> Any:
    proxies = [start_proxy() for _ in range(3)]
    with TargetSite(pages=40, delay=0.05) as slow_site:
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "PHAROX_PROXY_MAX_CONCURRENCY": max_concurrency,
                "CONCURRENT_REQUESTS": 16,
                "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
            },
            start_url=slow_site.url + "/",
        )
    most_at_once = max(proxy.max_active_requests for proxy in proxies)
    # The control run shows the proxies can see more than one connection at once.
    assert (most_at_once == 1) is exclusive
    assert_every_lease_released(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_a_pool_smaller_than_the_concurrency_waits_and_finishes(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=30, delay=0.02) as slow_site:
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "CONCURRENT_REQUESTS": 16,
                "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
            },
            start_url=slow_site.url + "/",
        )
    stats = stats_of(crawler)
    assert len({page["url"] for page in crawler.spider.seen}) == PAGES_AND_ROOT
    assert stats["pharox/acquire/empty"] > 0
    assert stats["pharox/acquire/wait_ms/max"] > 0
    assert stats["pharox/acquire/gave_up"] == 0
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_dead_and_hanging_proxies_make_retries_move_to_other_proxies(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    good = [start_proxy() for _ in range(2)]
    hanging = start_proxy(mode="hang")
    dead_url = f"http://127.0.0.1:{free_port()}"
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [dead_url, hanging.url, *(proxy.url for proxy in good)],
            "DOWNLOAD_TIMEOUT": 1,
            "RETRY_TIMES": 6,
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert len({page["url"] for page in crawler.spider.seen}) == PAGES_AND_ROOT
    assert stats["pharox/release/exception"] >= 2
    assert stats["retry/count"] >= 2
    assert hanging.max_open_connections >= 1
    assert {page["proxy"] for page in crawler.spider.seen} <= {p.url for p in good}
    assert_every_lease_released(stats)


@pytest.mark.parametrize("acquire_timeout", [0, 1])
@pytest_twisted.inlineCallbacks
def test_an_empty_pool_drops_requests_after_the_acquire_timeout(
    site: TargetSite, acquire_timeout: int, caplog: pytest.LogCaptureFixture
) -> Any:
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_ACQUIRE_TIMEOUT": acquire_timeout},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/acquire/gave_up"] == 1
    assert stats["pharox/acquire/leased"] == 0
    assert site.requests == []
    assert stats["pharox/acquire/wait_ms/max"] >= acquire_timeout * 1000
    assert "Pool 'default' has no proxies yet" in caplog.text
    assert "no proxy of pool 'default' was free within" in caplog.text
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_https_targets_go_through_connect_tunnels(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy(), start_proxy(username="user", password="pass")]
    with TargetSite(pages=10, tls=True) as tls_site:
        crawler: Crawler = yield crawl(
            LinkSpider,
            {"PHAROX_PROXIES": [proxies[0].url, proxies[1].auth_url]},
            start_url=tls_site.url + "/",
        )
        peers = {request.peer[1] for request in tls_site.requests}
    assert len({page["url"] for page in crawler.spider.seen}) == 11
    assert all(page["url"].startswith("https://") for page in crawler.spider.seen)
    assert peers <= proxies[0].upstream_ports | proxies[1].upstream_ports
    assert all(proxy.requests_count > 0 for proxy in proxies)
    assert_every_lease_released(stats_of(crawler))
