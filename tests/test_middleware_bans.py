"""Bans and failures: detected on release, cooled down in storage, retried."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.http import Response

from crawl_support import LinkSpider, assert_every_lease_released, crawl, stats_of
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl


def storage_after(crawler: Crawler) -> Any:
    return LeaseKeeper.for_crawler(crawler).manager.storage


@pytest_twisted.inlineCallbacks
def test_a_banned_proxy_cools_down_and_the_crawl_finishes_on_the_others(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    banned, *good = [start_proxy() for _ in range(3)]
    site.banned_proxy_ports.add(banned.port)
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [p.url for p in (banned, *good)]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert {page["status"] for page in crawler.spider.seen} == {200}
    assert banned.requests_count == 1
    assert stats["pharox/outcome/ban"] == 1
    assert stats["pharox/ban/status/403"] == 1
    assert stats["retry/reason_count/pharox_ban"] == 1
    assert stats["pharox/outcome/success"] == 31
    assert stats["pharox/pool/default/cooling_proxies"] == 1
    (cooled,) = [p for p in storage_after(crawler).list_proxies("default") if p.bans]
    assert (cooled.port, cooled.consecutive_bans) == (banned.port, 1)
    assert cooled.cooldown_until is not None
    assert_every_lease_released(stats)


class ContentBanSpider(LinkSpider):
    """Calls a page a ban by its content: page 3, whatever its status."""

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url + "page/3", callback=self.parse_leaf)
        yield scrapy.Request(self.start_url + "status/403", callback=self.parse_leaf)

    def pharox_is_ban(self, response: Response) -> bool:
        return b"Page 3" in response.body

    def parse_leaf(self, response: Response) -> None:
        self.seen.append({"url": response.url, "status": response.status})


@pytest_twisted.inlineCallbacks
def test_a_spider_ban_check_overrides_the_status_codes_and_retries_stop(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(4)]
    crawler: Crawler = yield crawl(
        ContentBanSpider,
        {
            "PHAROX_PROXIES": [p.url for p in proxies],
            "RETRY_TIMES": 2,
            "HTTPERROR_ALLOW_ALL": True,
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    # Page 3: three attempts, three bans, then the last response goes through.
    assert stats["pharox/outcome/ban"] == 3
    assert stats["retry/max_reached"] == 1
    # The 403 page is no ban by this spider's own test.
    assert stats["pharox/outcome/success"] == 1
    assert sorted(page["status"] for page in crawler.spider.seen) == [200, 403]
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_download_errors_count_as_failures(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    from scrapy_pharox.playground import free_port

    good = start_proxy()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [f"http://127.0.0.1:{free_port()}", good.url],
            "PHAROX_FAILURES_BEFORE_COOLDOWN": 1,
            "RETRY_TIMES": 5,
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/outcome/failure"] == 1
    assert stats["pharox/pool/default/cooling_proxies"] == 1
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_when_every_proxy_cools_down_requests_wait_for_the_first_back(
    site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
    caplog: pytest.LogCaptureFixture,
) -> Any:
    caplog.set_level(logging.INFO)
    only = start_proxy()
    site.banned_proxy_ports.add(only.port)
    # The site forgives the proxy before its one-second cooldown ends.
    forgive = threading.Timer(0.5, site.banned_proxy_ports.clear)
    forgive.start()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [only.url],
            "PHAROX_COOLDOWN_BASE": 1,
            "PHAROX_COOLDOWN_MAX": 1,
        },
        start_url=site.url + "/",
    )
    forgive.cancel()
    stats = stats_of(crawler)
    assert stats["pharox/outcome/ban"] == 1
    assert stats["pharox/acquire/wait_ms/max"] >= 500
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert "Every proxy of pool 'default' is cooling down" in caplog.text
    assert "A proxy of pool 'default' is back from its cooldown" in caplog.text
    assert_every_lease_released(stats)


class TwoDomainsSpider(LinkSpider):
    """Crawls one site under two names: 127.0.0.1 and localhost."""

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url)
        yield scrapy.Request(self.start_url.replace("127.0.0.1", "localhost"))


@pytest_twisted.inlineCallbacks
def test_a_domain_scoped_ban_keeps_the_proxy_serving_other_domains(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    banned, other = start_proxy(), start_proxy()
    site.banned_proxy_ports.add(banned.port)
    site.ban_host = "127.0.0.1"
    crawler: Crawler = yield crawl(
        TwoDomainsSpider,
        {
            "PHAROX_PROXIES": [banned.url, other.url],
            "PHAROX_BAN_SCOPE": "domain",
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    through_banned = [
        r.headers["Host"].split(":")[0]
        for r in site.requests
        if r.via_proxy_port == banned.port
    ]
    assert through_banned.count("127.0.0.1") == 1
    assert through_banned.count("localhost") > 1
    assert stats["pharox/outcome/ban"] == 1
    assert stats["pharox/pool/default/cooling_proxies"] == 0
    (cooldown,) = storage_after(crawler).list_domain_cooldowns("default")
    assert cooldown.domain == "127.0.0.1"
    assert len({page["url"] for page in crawler.spider.seen}) == 62
    assert_every_lease_released(stats)
