"""Proxy credentials reach the proxy and nothing else: not logs, stats or the site."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from scrapy.crawler import Crawler
from scrapy.settings import Settings

from crawl_support import (
    LinkSpider,
    assert_every_lease_released,
    crawl,
    stats_of,
)
from scrapy_pharox import PharoxProxyMiddleware
from scrapy_pharox.middleware_settings import answers_may_pass_us
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl

PASSWORD = "pa:ss/w@rd-7431"
PHAROX = "scrapy_pharox.PharoxProxyMiddleware"


@pytest.fixture
def auth_proxy(start_proxy: Callable[..., ForwardProxy]) -> ForwardProxy:
    return start_proxy(username="crawler", password=PASSWORD)


@pytest_twisted.inlineCallbacks
def test_an_authenticated_proxy_serves_the_crawl(
    site: TargetSite, auth_proxy: ForwardProxy
) -> Any:
    crawler: Crawler = yield crawl(
        LinkSpider, {"PHAROX_PROXIES": [auth_proxy.auth_url]}, start_url=site.url + "/"
    )
    assert auth_proxy.rejected_count == 0
    assert auth_proxy.requests_count == 31
    assert len(auth_proxy.seen_proxy_authorization) == 31
    assert_every_lease_released(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_the_password_appears_in_no_log_line_and_no_stat(
    site: TargetSite, auth_proxy: ForwardProxy, caplog: pytest.LogCaptureFixture
) -> Any:
    caplog.set_level(logging.DEBUG)
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [auth_proxy.auth_url], "PHAROX_STATS_INTERVAL": 0.05},
        start_url=site.url + "/",
    )
    messages = [record.getMessage() for record in caplog.records]
    assert any("Leases:" in message for message in messages)
    assert any("Crawled (200)" in message for message in messages)
    basic = base64.b64encode(f"crawler:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, quote(PASSWORD, safe=""), basic):
        assert not any(secret in message for message in messages)
        assert secret not in repr(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_credentials_never_reach_the_target_site(
    site: TargetSite, auth_proxy: ForwardProxy
) -> Any:
    yield crawl(
        LinkSpider, {"PHAROX_PROXIES": [auth_proxy.auth_url]}, start_url=site.url + "/"
    )
    assert site.requests
    for request in site.requests:
        names = {name.lower() for name in request.headers}
        assert "proxy-authorization" not in names
        assert not any("crawler" in value for value in request.headers.values())


class AnswersWithNothing:
    """A downloader middleware of the user's, which could answer with a request."""


@pytest.mark.parametrize(
    ("middlewares", "may_pass"),
    [
        ({}, False),  # Scrapy's after ours: HttpProxy, DownloaderStats, HttpCache
        ({f"{__name__}.AnswersWithNothing": 745}, True),
        ({f"{__name__}.AnswersWithNothing": 600}, False),  # before ours
        ({f"{__name__}.AnswersWithNothing": 745, PHAROX: 800}, False),
        ({PHAROX: None}, True),  # ours not among them: built by hand
    ],
)
def test_copies_are_cleaned_as_scheduled_only_when_a_later_middleware_may_answer(
    middlewares: dict[str, int | None], may_pass: bool
) -> None:
    settings = Settings({"DOWNLOADER_MIDDLEWARES": {PHAROX: 740, **middlewares}})

    assert answers_may_pass_us(settings, PharoxProxyMiddleware) is may_pass


def count_scheduled_cleaning(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs our request_scheduled handler cleans, from now on."""
    cleaned: list[str] = []
    original = PharoxProxyMiddleware.request_scheduled

    def counting(self: Any, request: Any, spider: Any = None) -> None:
        cleaned.append(request.url)
        original(self, request, spider)

    monkeypatch.setattr(PharoxProxyMiddleware, "request_scheduled", counting)
    return cleaned


@pytest_twisted.inlineCallbacks
def test_a_crawl_with_only_scrapys_middlewares_after_ours_pays_no_scheduling_handler(
    site: TargetSite, auth_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> Any:
    cleaned = count_scheduled_cleaning(monkeypatch)
    crawler: Crawler = yield crawl(
        LinkSpider, {"PHAROX_PROXIES": [auth_proxy.auth_url]}, start_url=site.url + "/"
    )
    assert len(crawler.spider.seen) == 31
    assert cleaned == []


@pytest_twisted.inlineCallbacks
def test_a_later_middleware_of_the_users_has_every_request_cleaned_as_scheduled(
    site: TargetSite, auth_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> Any:
    cleaned = count_scheduled_cleaning(monkeypatch)
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [auth_proxy.auth_url],
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.AnswersWithNothing": 745},
        },
        start_url=site.url + "/",
    )
    assert len(crawler.spider.seen) == 31
    assert site.url + "/" in cleaned
    assert len(cleaned) >= 31  # every request scheduled, duplicates too


# Scrapy 2.15 (the oldest admitted) leaves its JOBDIR queue files open at close.
JOBDIR_FILES_LEFT_OPEN = pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*requests.queue"
    ":pytest.PytestUnraisableExceptionWarning"
)


def jobdir_bytes(jobdir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in jobdir.rglob("*") if path.is_file())


@JOBDIR_FILES_LEFT_OPEN
@pytest_twisted.inlineCallbacks
def test_requests_kept_on_disk_for_a_resumed_crawl_hold_no_password(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy], tmp_path: Path
) -> Any:
    banned, fine = (start_proxy(username="crawler", password=PASSWORD) for _ in "ab")
    site.banned_proxy_ports = {banned.port}  # its requests come back as retries
    settings = {
        "PHAROX_PROXIES": [banned.auth_url, fine.auth_url],
        "JOBDIR": str(tmp_path / "job"),
        "CONCURRENT_REQUESTS": 2,
        # A ban barely rests the proxy: it keeps being banned, retries pile up.
        "PHAROX_COOLDOWN_BASE": 0.001,
        "PHAROX_COOLDOWN_MAX": 0.001,
    }
    first: Crawler = yield crawl(
        LinkSpider, {**settings, "CLOSESPIDER_PAGECOUNT": 6}, start_url=site.url + "/"
    )
    assert first.stats is not None
    assert first.stats.get_value("finish_reason") == "closespider_pagecount"
    on_disk = jobdir_bytes(tmp_path / "job")
    assert b"pharox_lease" in on_disk  # retried copies, with their old lease
    basic = base64.b64encode(f"crawler:{PASSWORD}".encode())
    for secret in (PASSWORD.encode(), quote(PASSWORD, safe="").encode(), basic):
        assert secret not in on_disk
    site.banned_proxy_ports = set()
    resumed: Crawler = yield crawl(LinkSpider, settings, start_url=site.url + "/")
    assert resumed.spider.seen and all(
        page["status"] == 200 for page in resumed.spider.seen
    )
    first_leases = {page["lease_id"] for page in first.spider.seen}
    assert not first_leases & {page["lease_id"] for page in resumed.spider.seen}
    assert_every_lease_released(stats_of(first))
    assert_every_lease_released(stats_of(resumed))


class AnswersWithACopy:
    """A downloader middleware after ours (745) that answers the first page's
    response with a copy of its request, to be fetched last: a copy that went
    out through a proxy, on its way to the scheduler (and the JOBDIR)."""

    answered = False

    def process_response(self, request: Any, response: Any, spider: Any = None) -> Any:
        if type(self).answered or "/page/" not in request.url:
            return response
        type(self).answered = True
        return request.replace(priority=-100, dont_filter=True)


@JOBDIR_FILES_LEFT_OPEN
@pytest_twisted.inlineCallbacks
def test_a_copy_made_after_our_middleware_reaches_the_disk_without_credentials(
    site: TargetSite, auth_proxy: ForwardProxy, tmp_path: Path
) -> Any:
    AnswersWithACopy.answered = False
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [auth_proxy.auth_url],
            "JOBDIR": str(tmp_path / "job"),
            "CLOSESPIDER_PAGECOUNT": 4,
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.AnswersWithACopy": 745},
        },
        start_url=site.url + "/",
    )
    assert AnswersWithACopy.answered
    on_disk = jobdir_bytes(tmp_path / "job")
    assert b"priority" in on_disk and b"pharox_lease" in on_disk  # the copy
    basic = base64.b64encode(f"crawler:{PASSWORD}".encode())
    for secret in (PASSWORD.encode(), quote(PASSWORD, safe="").encode(), basic):
        assert secret not in on_disk
    stats = stats_of(crawler)
    # The copy gave its lease back when it was scheduled: no request waited on it.
    assert "pharox/acquire/gave_up" not in stats or not stats["pharox/acquire/gave_up"]
    assert_every_lease_released(stats)
