"""Which proxy a request gets: pools and filters per spider and per request,
requests whose proxy someone else chose, and copies of leased requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response

from crawl_support import (
    LinkSpider,
    assert_every_lease_released,
    crawl,
    stats_of,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl


@pytest.fixture
def countries(
    tmp_path: Path, start_proxy: Callable[..., ForwardProxy]
) -> dict[str, ForwardProxy]:
    """A DE, an NL and a US proxy, written to a proxies file with their country."""
    proxies = {country: start_proxy() for country in ("DE", "NL", "US")}
    (tmp_path / "proxies.txt").write_text(
        "# test pool\n\n"
        + "".join(f"{p.url} country={c}  # {c}\n" for c, p in proxies.items())
    )
    return proxies


class GermanSpider(LinkSpider):
    pharox_filters: ClassVar[dict[str, Any]] = {"country": "DE"}


class OneUSRequestSpider(GermanSpider):
    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url)
        yield scrapy.Request(
            self.start_url, meta={"pharox_filters": {"country": "US"}}, dont_filter=True
        )

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        lease = response.meta["pharox_lease"]
        self.seen.append({"url": response.url, "country": lease.proxy.country})
        return iter(())


@pytest_twisted.inlineCallbacks
def test_spider_filters_choose_the_proxies_of_every_request(
    site: TargetSite, tmp_path: Path, countries: dict[str, ForwardProxy]
) -> Any:
    crawler: Crawler = yield crawl(
        GermanSpider,
        {"PHAROX_PROXIES_FILE": str(tmp_path / "proxies.txt")},
        start_url=site.url + "/",
    )
    assert {page["country"] for page in crawler.spider.seen} == {"DE"}
    assert countries["DE"].requests_count == 31
    assert countries["NL"].requests_count == countries["US"].requests_count == 0


@pytest_twisted.inlineCallbacks
def test_request_meta_filters_override_the_spider_filters(
    site: TargetSite, tmp_path: Path, countries: dict[str, ForwardProxy]
) -> Any:
    crawler: Crawler = yield crawl(
        OneUSRequestSpider,
        {"PHAROX_PROXIES_FILE": str(tmp_path / "proxies.txt")},
        start_url=site.url + "/",
    )
    assert sorted(page["country"] for page in crawler.spider.seen) == ["DE", "US"]
    assert countries["US"].requests_count == 1


@pytest_twisted.inlineCallbacks
def test_setting_filters_apply_when_the_spider_has_none(
    site: TargetSite, tmp_path: Path, countries: dict[str, ForwardProxy]
) -> Any:
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES_FILE": str(tmp_path / "proxies.txt"),
            "PHAROX_FILTERS": '{"none_of": [{"country": "DE"}, {"country": "US"}]}',
        },
        start_url=site.url + "/",
    )
    assert {page["country"] for page in crawler.spider.seen} == {"NL"}


class MissingPoolSpider(LinkSpider):
    pharox_pool = "missing"

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url)
        yield scrapy.Request(
            self.start_url + "page/1", meta={"pharox_pool": "eu"}, callback=self.leaf
        )

    def leaf(self, response: Response) -> None:
        lease = response.meta["pharox_lease"]
        self.seen.append({"url": response.url, "pool": lease.pool_name})


@pytest_twisted.inlineCallbacks
def test_spider_pool_and_request_pool_choose_where_leases_come_from(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        MissingPoolSpider,
        {
            "PHAROX_POOL": "eu",
            "PHAROX_PROXIES": [proxy.url],
            "PHAROX_ACQUIRE_TIMEOUT": 0,
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert crawler.spider.seen == [{"url": site.url + "/page/1", "pool": "eu"}]
    assert stats["pharox/acquire/gave_up"] == 1
    assert stats["pharox/pool/eu/total_proxies"] == 1
    assert_every_lease_released(stats)


class ChosenProxySpider(LinkSpider):
    """Two requests whose proxy someone else chose: a fixed one, and none."""

    fixed_proxy = ""

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url, meta={"proxy": self.fixed_proxy})
        yield scrapy.Request(
            self.start_url + "page/2", meta={"proxy": None}, callback=self.parse_one
        )

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.parse_one(response)
        return iter(())

    def parse_one(self, response: Response) -> None:
        self.seen.append(
            {"url": response.url, "lease": response.meta.get("pharox_lease")}
        )


@pytest_twisted.inlineCallbacks
def test_requests_whose_proxy_someone_else_set_are_left_alone(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    pooled, outsider = start_proxy(), start_proxy()
    ChosenProxySpider.fixed_proxy = outsider.url
    crawler: Crawler = yield crawl(
        ChosenProxySpider, {"PHAROX_PROXIES": [pooled.url]}, start_url=site.url + "/"
    )
    stats = stats_of(crawler)
    assert [page["lease"] for page in crawler.spider.seen] == [None, None]
    assert outsider.requests_count == 1 and pooled.requests_count == 0
    assert sorted(r.via_proxy_port or 0 for r in site.requests) == [0, outsider.port]
    assert stats["pharox/acquire/leased"] == 0


class FollowWithMetaSpider(LinkSpider):
    """Follows each page once more with the old meta, lease included."""

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.seen.append(
            {"url": response.url, "lease_id": response.meta["pharox_lease"].id}
        )
        if not response.meta.get("again"):
            yield response.follow(
                response.url,
                meta={**response.meta, "again": True},
                dont_filter=True,
                callback=self.parse,
            )


@pytest_twisted.inlineCallbacks
def test_a_copied_request_gets_a_lease_of_its_own(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        FollowWithMetaSpider,
        {"PHAROX_PROXIES": [proxy.url for proxy in proxies]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    lease_ids = [page["lease_id"] for page in crawler.spider.seen]
    assert len(lease_ids) == 2 and len(set(lease_ids)) == 2
    assert stats["pharox/acquire/leased"] == 2
    assert stats["pharox/release/response"] == 2
    assert_every_lease_released(stats)


class DropOddPages:
    """A downloader middleware after ours that drops some requests."""

    def process_request(
        self, request: scrapy.Request, spider: scrapy.Spider | None = None
    ) -> None:
        if request.url.rstrip("/").split("/")[-1] in {"1", "3", "5"}:
            raise IgnoreRequest("dropped by the test")


@pytest_twisted.inlineCallbacks
def test_a_request_dropped_by_a_later_middleware_gives_its_lease_back(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [proxy.url],
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.DropOddPages": 745},
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/release/closed"] == 3
    assert len(crawler.spider.seen) == 28
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_socks_proxies_are_never_leased_by_the_default_handler(
    site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
    caplog: pytest.LogCaptureFixture,
) -> Any:
    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": ["socks5://127.0.0.1:1", proxy.url]},
        start_url=site.url + "/",
    )
    assert proxy.requests_count == 31
    assert "holds 1 proxies speaking socks5" in caplog.text
    assert_every_lease_released(stats_of(crawler))
