"""Pools that follow a live list, in real crawls: PHAROX_PROXIES_URL served by
the playground's ``/proxies.txt`` (fetched through Scrapy's downloader), and
PHAROX_PROXIES_FILE re-read when it changed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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

REFRESH = 0.5
#: How late a refresh may come on a busy machine, beyond its period.
SLACK = 1.0


class ScriptedSpider(LinkSpider):
    """A LinkSpider that, after the n-th response, calls ``script[n]()`` and
    notes when (``moments[n]``, time.monotonic())."""

    def __init__(
        self, *args: Any, script: dict[int, Callable[[], None]], **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.script, self.moments = script, {}

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        yield from super().parse(response)
        step = self.script.get(len(self.seen))
        if step is not None:
            step()
            self.moments[len(self.seen)] = time.monotonic()


def list_of(*proxies: ForwardProxy) -> str:
    return "".join(f"{proxy.url}\n" for proxy in proxies)


def list_settings(site: TargetSite, **more: Any) -> dict[str, Any]:
    return {
        "PHAROX_PROXIES_URL": f"{site.url}/proxies.txt",
        "PHAROX_PROXIES_REFRESH": REFRESH,
        "PHAROX_ACQUIRE_TIMEOUT": 10,
        **more,
    }


def arrivals(site: TargetSite, proxy: ForwardProxy) -> list[float]:
    """When the site got each request the proxy carried."""
    return [r.at for r in site.requests if r.via_proxy_port == proxy.port]


def stored(crawler: Crawler, proxy: ForwardProxy) -> Any:
    storage = LeaseKeeper.for_crawler(crawler).manager.storage
    (found,) = [p for p in storage.list_proxies("default") if p.port == proxy.port]
    return found


@pytest.fixture
def slow_site() -> Iterator[TargetSite]:
    with TargetSite(pages=40, delay=0.05) as target:
        yield target


@pytest_twisted.inlineCallbacks
def test_a_crawl_on_a_list_url_alone_starts_empty_and_fetches_every_page(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    site.proxy_list = "# two proxies\n" + list_of(*proxies)
    crawler: Crawler = yield crawl(
        LinkSpider,
        list_settings(site, PHAROX_PROXIES_REFRESH=0),
        start_url=site.url + "/",
    )
    pages = {page["url"] for page in crawler.spider.seen}
    assert len(pages) == 31  # the index and its 30 pages
    carried = {r.via_proxy_port for r in site.requests if r not in site.list_fetches}
    assert carried == {proxy.port for proxy in proxies}
    assert len(site.list_fetches) == 1  # at start only
    # Through Scrapy's downloader, with no proxy of ours.
    assert site.list_fetches[0].via_proxy_port is None
    stats = stats_of(crawler)
    assert stats["pharox/source/added"] == 2
    assert stats["pharox/source/error"] == 0
    assert stats["pharox/acquire/gave_up"] == 0
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_list_that_changes_moves_the_crawl_to_its_new_proxies_within_a_refresh(
    slow_site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    old = [start_proxy() for _ in range(2)]
    new = [start_proxy() for _ in range(2)]
    slow_site.proxy_list = list_of(*old)

    def change() -> None:
        slow_site.proxy_list = list_of(*new)

    crawler: Crawler = yield crawl(
        ScriptedSpider,
        list_settings(slow_site),
        start_url=slow_site.url + "/",
        script={8: change},
    )
    changed_at = crawler.spider.moments[8]
    assert len(crawler.spider.seen) == 41
    for proxy in old:
        assert proxy.requests_count > 0
        assert max(arrivals(slow_site, proxy)) < changed_at + REFRESH + SLACK
    for proxy in new:
        assert proxy.requests_count > 0
    stats = stats_of(crawler)
    assert stats["pharox/source/added"] == 4
    assert stats["pharox/source/removed"] == 2
    assert len(slow_site.list_fetches) >= 3
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_leaves_the_list_and_comes_back_keeps_its_counters(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    slow_site = TargetSite(pages=40, delay=0.1).start()
    try:
        yield from _leave_and_come_back(slow_site, start_proxy)
    finally:
        slow_site.stop()


def _leave_and_come_back(
    slow_site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    leaving, staying = start_proxy(), start_proxy()
    both = list_of(leaving, staying)
    slow_site.proxy_list = both

    def leave() -> None:
        slow_site.proxy_list = list_of(staying)

    def come_back() -> None:
        slow_site.proxy_list = both

    crawler: Crawler = yield crawl(
        ScriptedSpider,
        list_settings(slow_site),
        start_url=slow_site.url + "/",
        script={6: leave, 30: come_back},
    )
    left_at, back_at = crawler.spider.moments[6], crawler.spider.moments[30]
    assert back_at - left_at > REFRESH + SLACK, "the crawl went too fast to tell"
    times = arrivals(slow_site, leaving)
    before = [t for t in times if t < left_at]
    assert before
    assert not [t for t in times if left_at + REFRESH + SLACK < t < back_at]
    assert [t for t in times if t > back_at]  # leased again
    # One proxy all along: its successes count every request it carried.
    assert stored(crawler, leaving).successes == leaving.requests_count == len(times)
    stats = stats_of(crawler)
    assert (stats["pharox/source/added"], stats["pharox/source/removed"]) == (3, 1)
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_list_url_that_fails_keeps_the_last_list_and_warns_once_per_refresh(
    slow_site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
    caplog: pytest.LogCaptureFixture,
) -> Any:
    proxy = start_proxy()
    slow_site.proxy_list = list_of(proxy)

    answered: list[int] = []

    def fail() -> None:
        slow_site.proxy_list_status = 500
        answered.append(len(slow_site.list_fetches))

    crawler: Crawler = yield crawl(
        ScriptedSpider,
        list_settings(slow_site, CONCURRENT_REQUESTS=1),
        start_url=slow_site.url + "/",
        script={3: fail},
    )
    assert len(crawler.spider.seen) == 41
    assert proxy.requests_count == 41  # the last list kept: the proxy stayed
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "Could not refresh" in r.getMessage()
    ]
    # One warning per failed fetch, give or take the one under way at each end.
    failed_fetches = len(slow_site.list_fetches) - answered[0]
    stats = stats_of(crawler)
    assert stats["pharox/source/error"] == len(warnings) >= 2
    assert failed_fetches - 1 <= len(warnings) <= failed_fetches + 1
    assert warnings[0] == (
        "Could not refresh pool 'default' from PHAROX_PROXIES_URL "
        f"{slow_site.url}/proxies.txt: HTTP 500; it keeps its last list"
    )
    assert stats["pharox/source/removed"] == 0
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_proxies_file_is_read_again_when_it_changed(
    slow_site: TargetSite, start_proxy: Callable[..., ForwardProxy], tmp_path: Path
) -> Any:
    old, new = start_proxy(), start_proxy()
    proxies_file = tmp_path / "proxies.txt"
    proxies_file.write_text(list_of(old), encoding="utf-8")

    def change() -> None:
        proxies_file.write_text(f"# moved\n{list_of(new)}", encoding="utf-8")

    crawler: Crawler = yield crawl(
        ScriptedSpider,
        {"PHAROX_PROXIES_FILE": str(proxies_file), "PHAROX_PROXIES_REFRESH": REFRESH},
        start_url=slow_site.url + "/",
        script={8: change},
    )
    changed_at = crawler.spider.moments[8]
    assert len(crawler.spider.seen) == 41
    assert max(arrivals(slow_site, old)) < changed_at + REFRESH + SLACK
    assert new.requests_count > 0
    stats = stats_of(crawler)
    assert (stats["pharox/source/added"], stats["pharox/source/removed"]) == (1, 1)
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_no_log_line_holds_the_list_password_or_a_proxy_password(
    slow_site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
    caplog: pytest.LogCaptureFixture,
) -> Any:
    caplog.set_level(logging.DEBUG)
    guarded = start_proxy(username="crawler", password="proxy-s3cret")
    slow_site.proxy_list = (
        f"{guarded.auth_url}\nhttp://bob:hunter2-line@127.0.0.1   # no port: skipped\n"
    )

    def fail() -> None:
        slow_site.proxy_list_status = 503

    settings = list_settings(slow_site)
    settings["PHAROX_PROXIES_URL"] = (
        f"http://lister:list-s3cret@127.0.0.1:{slow_site.port}/proxies.txt"
    )
    crawler: Crawler = yield crawl(
        ScriptedSpider, settings, start_url=slow_site.url + "/", script={10: fail}
    )
    assert len(crawler.spider.seen) == 41
    assert guarded.requests_count == 41
    assert slow_site.list_fetches[0].headers["Authorization"].startswith("Basic ")
    messages = [record.getMessage() for record in caplog.records]
    assert (
        "PHAROX_PROXIES_URL line 2: invalid proxy URL 'http://bob:***@127.0.0.1': "
        "no port: line skipped"
    ) in messages
    assert any("http://lister:***@127.0.0.1" in message for message in messages)
    for secret in ("list-s3cret", "proxy-s3cret", "hunter2-line"):
        assert not [message for message in messages if secret in message], secret
    stats = stats_of(crawler)
    assert stats["pharox/source/error"] >= 1
    assert not [value for value in map(str, stats.values()) if "s3cret" in value]
