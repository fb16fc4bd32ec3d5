"""Sharing proxies over time in real crawls: reuse delays per IP and host,
download slots per proxy, no lease held while a slot delays, Retry-After rests.

The site records when each request arrived, for which host and through which
proxy; the assertions read those records.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from twisted.internet import task

from crawl_support import (
    LinkSpider,
    assert_every_lease_released,
    closest_arrival_after_lease,
    closest_lease_reuse,
    closest_reuse,
    crawl,
    stats_of,
)
from scrapy_pharox import InMemoryStorage
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl


class TwoHostsSpider(LinkSpider):
    """Crawls one site under two host names: 127.0.0.1 and localhost."""

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url)
        yield scrapy.Request(self.start_url.replace("127.0.0.1", "localhost"))


def storage_of(crawler: Crawler) -> Any:
    return LeaseKeeper.for_crawler(crawler).manager.storage


# -- the reuse delay ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_reuse_delay_spaces_the_requests_of_each_proxy_to_each_host(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=10) as site:
        started = time.monotonic()
        crawler: Crawler = yield crawl(
            TwoHostsSpider,
            {
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "PHAROX_REUSE_DELAY": 0.4,
            },
            start_url=site.url + "/",
        )
        took = time.monotonic() - started
        requests = list(site.requests)
    stats = stats_of(crawler)
    assert len(requests) == 22 == stats["pharox/outcome/success"]
    assert {request.host for request in requests} == {"127.0.0.1", "localhost"}
    # By the storage's clock, from one lease to the next: the delay exactly.
    assert closest_lease_reuse(crawler.spider.seen) >= 0.4 - 1e-6
    # At the site: no request before the delay since the lease before it.
    assert closest_arrival_after_lease(requests, crawler.spider.seen) >= 0.4 - 1e-6
    assert stats["pharox/acquire/paced"] > 0
    # 11 requests per host over 2 proxies: at least 5 delays in a row.
    assert took >= 5 * 0.4
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_the_spider_attribute_and_the_meta_key_override_the_reuse_delay(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class PatientSpider(LinkSpider):
        pharox_reuse_delay = 0.3

        async def start(self) -> AsyncIterator[Any]:
            for number in (1, 2, 3):
                yield scrapy.Request(f"{self.start_url}page/{number}")
            # No delay for this one: it may follow the others at once.
            yield scrapy.Request(
                f"{self.start_url}page/4", meta={"pharox_reuse_delay": 0}
            )

        def parse(self, response: Any) -> None:
            self.seen.append({"url": response.url})

    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        PatientSpider,
        {"PHAROX_PROXIES": [proxy.url], "CONCURRENT_REQUESTS": 1},
        start_url=site.url + "/",
    )
    by_page = {request.path: request.at for request in site.requests}
    assert by_page["/page/2"] - by_page["/page/1"] >= 0.25
    assert by_page["/page/3"] - by_page["/page/2"] >= 0.25
    assert by_page["/page/4"] - by_page["/page/3"] < 0.25
    assert stats_of(crawler)["pharox/acquire/paced"] >= 2


# -- download slots per proxy ------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_proxy_slots_apply_the_download_delay_per_proxy_not_per_site(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(4)]
    with TargetSite(pages=16) as site:
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "PHAROX_DOWNLOAD_SLOT": "proxy",
                "DOWNLOAD_DELAY": 0.5,
                "CONCURRENT_REQUESTS": 16,
                # Without Scrapy's jitter of up to half the delay, what is
                # left to spread the site's view is the trips'.
                **no_jitter(),
            },
            start_url=site.url + "/",
        )
        requests = sorted(site.requests, key=lambda request: request.at)
    stats = stats_of(crawler)
    assert len(requests) == 17 == stats["pharox/outcome/success"]
    # Each IP keeps the delay (less what a trip can add on a busy machine) ...
    assert closest_reuse(requests) >= 0.5 - 0.25
    # ... while the site sees requests closer than one per delay.
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert sum(gap < 0.2 for gap in gaps) >= 4
    assert {request.via_proxy_port for request in requests} == {
        proxy.port for proxy in proxies
    }
    assert_every_lease_released(stats)


def no_jitter() -> dict[str, Any]:
    """The settings of an exact DOWNLOAD_DELAY on this Scrapy."""
    from scrapy.settings import default_settings

    if hasattr(default_settings, "DOWNLOAD_DELAY_JITTER"):
        return {"DOWNLOAD_DELAY_JITTER": 0}
    return {"RANDOMIZE_DOWNLOAD_DELAY": False}


class HoldSpider(LinkSpider):
    """Notes how long each request held its lease before it was sent."""

    def parse(self, response: Any) -> Any:
        lease = response.meta["pharox_lease"]
        sent = time.time() - response.meta["download_latency"]
        self.seen.append({"held": sent - lease.acquired_at.timestamp()})
        yield from response.follow_all(css="a", callback=self.parse)


@pytest_twisted.inlineCallbacks
def test_with_proxy_slots_a_proxy_is_leased_when_its_slot_would_send(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=10) as site:
        crawler: Crawler = yield crawl(
            HoldSpider,
            {
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "PHAROX_DOWNLOAD_SLOT": "proxy",
                "DOWNLOAD_DELAY": 0.4,
                "CONCURRENT_REQUESTS": 16,
                **no_jitter(),
            },
            start_url=site.url + "/",
        )
    held = sorted(page["held"] for page in crawler.spider.seen)
    assert len(held) == 11
    # Leased into a slot that still delays, a request would hold its proxy
    # for most of the 0.4 s; leased when the slot would send, for none of it.
    assert held[len(held) * 3 // 4] < 0.15
    assert stats_of(crawler)["pharox/acquire/paced"] > 0


@pytest_twisted.inlineCallbacks
def test_proxy_slots_name_host_and_proxy_unless_the_request_names_its_own(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class SlotSpider(LinkSpider):
        async def start(self) -> AsyncIterator[Any]:
            yield scrapy.Request(self.start_url, meta={"download_slot": "mine"})
            yield scrapy.Request(self.start_url + "page/1")

        def parse(self, response: Any) -> None:
            lease = response.meta["pharox_lease"]
            self.seen.append(
                {"slot": response.meta["download_slot"], "proxy_id": lease.proxy_id}
            )

    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        SlotSpider,
        {"PHAROX_PROXIES": [proxy.url], "PHAROX_DOWNLOAD_SLOT": "proxy"},
        start_url=site.url + "/",
    )
    slots = sorted(page["slot"] for page in crawler.spider.seen)
    (proxy_id,) = {page["proxy_id"] for page in crawler.spider.seen}
    assert slots == [f"127.0.0.1 via {proxy_id}", "mine"]


# -- no lease while the slot delays ------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_polite_crawl_holds_about_one_lease_while_its_requests_wait(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(6)]
    storage = InMemoryStorage()
    held: list[int] = []

    def count_leases() -> None:
        stats = storage.get_pool_stats("default")
        held.append(stats.total_leases if stats is not None else 0)

    with TargetSite(pages=6) as site:
        deferred = crawl(
            LinkSpider,
            {
                "PHAROX_STORAGE": lambda: storage,  # settings copy values
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "DOWNLOAD_DELAY": 0.3,
                "CONCURRENT_REQUESTS": 16,
            },
            start_url=site.url + "/",
        )
        sampler = task.LoopingCall(count_leases)
        sampler.start(0.02)
        crawler: Crawler = yield deferred
        sampler.stop()
    stats = stats_of(crawler)
    assert stats["pharox/outcome/success"] == 7
    # Six pages wait their turn at once; without the gate each held a proxy.
    assert max(held) <= 2
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_crawl_without_delay_is_served_while_a_polite_neighbour_waits(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(6)]
    shared = InMemoryStorage()
    settings = {
        "PHAROX_STORAGE": lambda: shared,  # settings copy values
        "PHAROX_PROXIES": [proxy.url for proxy in proxies],
        "CONCURRENT_REQUESTS": 16,
    }
    polite_pages_when_busy_done: list[int] = []
    with TargetSite(pages=20) as polite_site, TargetSite(pages=60) as busy_site:
        polite = crawl(
            LinkSpider,
            {**settings, "DOWNLOAD_DELAY": 0.3},
            start_url=polite_site.url + "/",
        )
        yield task.deferLater(_reactor(), 0.5, lambda: None)  # the polite one first
        busy_crawler: Crawler = yield crawl(
            LinkSpider, settings, start_url=busy_site.url + "/"
        )
        polite_pages_when_busy_done.append(len(polite_site.requests))
        polite_crawler: Crawler = yield polite
    assert stats_of(busy_crawler)["pharox/outcome/success"] == 61
    assert stats_of(busy_crawler)["pharox/acquire/gave_up"] == 0
    assert stats_of(polite_crawler)["pharox/outcome/success"] == 21
    # The busy crawl did not wait for the polite one to drain: holding a proxy
    # per waiting request, the polite one would keep all six until its last
    # five pages.
    assert polite_pages_when_busy_done[0] <= 10


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http-date"])
@pytest_twisted.inlineCallbacks
def test_a_429_with_retry_after_rests_the_proxy_for_that_host_without_a_ban(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy], form: str
) -> Any:
    in_30_seconds = datetime.now(timezone.utc) + timedelta(seconds=30)
    retry_after = "30" if form == "seconds" else format_datetime(in_30_seconds, True)
    throttled, *others = [start_proxy() for _ in range(3)]
    site.throttled_proxy_ports[throttled.port] = retry_after
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [p.url for p in (throttled, *others)]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert {page["status"] for page in crawler.spider.seen} == {200}
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert throttled.requests_count == 1
    assert stats["pharox/outcome/throttled"] == 1
    assert stats["retry/reason_count/pharox_throttled"] == 1
    assert stats.get("pharox/outcome/ban", 0) == 0
    assert not any(key.startswith("pharox/ban/status/") for key in stats)
    (proxy,) = [
        p
        for p in storage_of(crawler).list_proxies("default")
        if p.port == throttled.port
    ]
    assert (proxy.bans, proxy.consecutive_bans, proxy.cooldown_until) == (0, 0, None)
    (rest,) = storage_of(crawler).list_domain_cooldowns("default")
    assert rest.domain == "127.0.0.1" and rest.consecutive_bans == 0
    assert rest.cooldown_until is not None
    left = (rest.cooldown_until - datetime.now(timezone.utc)).total_seconds()
    assert 15 < left <= 30
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_429_without_retry_after_is_a_ban_as_before(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    limited, *others = [start_proxy() for _ in range(3)]
    site.throttled_proxy_ports[limited.port] = ""  # a 429, no header
    crawler: Crawler = yield crawl(
        LinkSpider,
        {"PHAROX_PROXIES": [p.url for p in (limited, *others)]},
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    assert stats["pharox/outcome/ban"] == 1
    assert stats["pharox/ban/status/429"] == 1
    assert stats.get("pharox/outcome/throttled", 0) == 0


class CtrlCAfterIndex(LinkSpider):
    """Stops the crawl (as Ctrl-C does) half a second after the index came."""

    def __init__(self, ctrl_c: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctrl_c = ctrl_c

    def parse(self, response: Any) -> Any:
        if not self.seen:
            _reactor().callLater(0.5, self.ctrl_c)
        yield from super().parse(response)


@pytest_twisted.inlineCallbacks
def test_a_stop_hands_back_the_requests_waiting_for_their_slot_at_once(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    from test_stopping import crawl_with_ctrl_c

    proxies = [start_proxy() for _ in range(3)]
    started = time.monotonic()
    crawler: Crawler = yield crawl_with_ctrl_c(
        CtrlCAfterIndex,
        {"PHAROX_PROXIES": [p.url for p in proxies], "DOWNLOAD_DELAY": 10},
        start_url=site.url + "/",
    )
    elapsed = time.monotonic() - started
    stats = stats_of(crawler)
    assert stats["finish_reason"] == "shutdown"
    # The downloader's other 7 requests waited their turn (the next one 5 to
    # 15 s after the index): handed back at the stop, not let through first.
    assert elapsed < 4
    assert stats["pharox/acquire/requeued"] >= 7
    assert_every_lease_released(stats)


class ReplacesPageOne:
    """A downloader middleware after ours that answers /page/1 with a copy of
    it (as a middleware that rewrites URLs does): the original never reaches
    its download slot."""

    def process_request(self, request: Any, spider: Any = None) -> Any:
        if request.url.endswith("/page/1") and not request.meta.get("replaced"):
            return request.replace(
                meta={**request.meta, "replaced": True}, dont_filter=True
            )
        return None


@pytest_twisted.inlineCallbacks
def test_a_request_answered_with_a_copy_does_not_hold_up_its_slot(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            "PHAROX_PROXIES": [proxy.url],
            "DOWNLOAD_DELAY": 0.05,
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.ReplacesPageOne": 745},
            "CLOSESPIDER_TIMEOUT": 20,
        },
        start_url=site.url + "/",
    )
    stats = stats_of(crawler)
    # Every page, the copy of /page/1 included, not the 20 s timeout.
    assert stats["finish_reason"] == "finished"
    assert len({page["url"] for page in crawler.spider.seen}) == 31
    assert_every_lease_released(stats)
