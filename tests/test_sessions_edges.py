"""Sessions at their edges: two crawls on one key, a request waiting in its
download slot, a failing storage, domain-scoped bans, failures, what goes to
disk, and a close while requests wait for their turn."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_twisted
import scrapy
from scrapy.core.scheduler import Scheduler
from scrapy.crawler import Crawler
from scrapy.http import Response
from test_sessions_crawl import BurningSpider, DyingProxySpider
from twisted.internet.defer import DeferredList

from crawl_support import assert_every_lease_released, crawl, stats_of
from scrapy_pharox import InMemoryStorage
from scrapy_pharox.exceptions import StorageError
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.playground import ForwardProxy, TargetSite
from session_support import FlowSpider

pytestmark = pytest.mark.crawl


class SlowPagesSpider(scrapy.Spider):
    """``count`` requests to ``/slow``, one after another, in session ``key``."""

    name = "slow-pages"

    def __init__(self, base_url: str, count: int, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url, self.count, self.key = base_url, int(count), key
        self.ports: list[int] = []

    async def start(self) -> Any:
        yield self.page(0)

    def page(self, number: int) -> scrapy.Request:
        return scrapy.Request(
            f"{self.base_url}/slow?n={number}",
            meta={"pharox_session": self.key},
            cb_kwargs={"number": number},
            dont_filter=True,
        )

    def parse(self, response: Response, number: int) -> Any:
        self.ports.append(response.meta["pharox_lease"].proxy.port)
        if number + 1 < self.count:
            yield self.page(number + 1)


@pytest_twisted.inlineCallbacks
def test_two_crawls_meeting_one_key_never_use_its_proxy_at_once(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    storage = InMemoryStorage()
    proxies = [start_proxy() for _ in range(2)]
    settings = {
        "PHAROX_PROXIES": [p.url for p in proxies],
        "PHAROX_STORAGE": lambda: storage,  # settings copy values
    }
    with TargetSite(pages=1, delay=0.5) as slow_site:
        results = yield DeferredList(
            [
                crawl(SlowPagesSpider, settings, base_url=slow_site.url, count=4, key=k)
                for k in ("shared", "shared")
            ]
        )
    crawlers = [crawler for _, crawler in results]
    # One crawl had the session at a time; the other waited for it.
    assert max(proxy.max_active_requests for proxy in proxies) == 1
    assert sorted(len(crawler.spider.ports) for crawler in crawlers) == [4, 4]
    for crawler in crawlers:
        assert_every_lease_released(stats_of(crawler))


class SlotWaitSpider(scrapy.Spider):
    """Two sessions on one host with a long DOWNLOAD_DELAY, so the second
    waits in its download slot; then a plain request for another host."""

    name = "slot-wait"

    def __init__(self, base_url: str, other_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url, self.other_url = base_url, other_url

    async def start(self) -> Any:
        for key in ("a", "b"):
            yield scrapy.Request(
                f"{self.base_url}/page/1?{key}",
                meta={"pharox_session": key},
                dont_filter=True,
            )

    def parse(self, response: Response) -> Any:
        if response.meta.get("pharox_session") == "a":
            yield scrapy.Request(
                f"{self.other_url}/page/1",
                meta={"pharox_session": None},
                dont_filter=True,
            )


@pytest_twisted.inlineCallbacks
def test_a_session_request_waiting_in_its_download_slot_keeps_its_proxy(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=1, delay=1.5) as target:
        crawler: Crawler = yield crawl(
            SlotWaitSpider,
            {
                "PHAROX_PROXIES": [p.url for p in proxies],
                "PHAROX_SESSION_IDLE_SECONDS": 0.1,
                "DOWNLOAD_TIMEOUT": 1.9,
                "DOWNLOAD_DELAY": 5,  # b waits in its slot past its first expiry
                "DOWNLOAD_DELAY_JITTER": 0,
            },
            base_url=target.url,
            other_url=target.url.replace("127.0.0.1", "localhost"),
        )
    assert len(target.requests) == 3
    assert max(proxy.max_active_requests for proxy in proxies) == 1
    assert_every_lease_released(stats_of(crawler))


class FailingRenewals(InMemoryStorage):
    """Memory in worker threads, as a database is, whose renewals fail."""

    blocking_io = True

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    def renew_session(self, *args: Any, **kwargs: Any) -> Any:
        self.renewals += 1
        raise StorageError("the database went away")


@pytest_twisted.inlineCallbacks
def test_a_failing_renewal_gives_up_within_the_acquire_timeout(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    storage = FailingRenewals()
    proxy = start_proxy()
    with TargetSite(pages=1, delay=0.6) as slow_site:
        crawler: Crawler = yield crawl(
            SlowPagesSpider,
            {
                "PHAROX_PROXIES": [proxy.url],
                "PHAROX_STORAGE": lambda: storage,
                "PHAROX_SESSION_IDLE_SECONDS": 0.1,
                "DOWNLOAD_TIMEOUT": 1,
                "PHAROX_ACQUIRE_TIMEOUT": 2,
                "CLOSESPIDER_TIMEOUT": 10,
            },
            base_url=slow_site.url,
            count=2,
            key="k",
        )
    stats = stats_of(crawler)
    assert stats["finish_reason"] == "finished"  # not the CLOSESPIDER_TIMEOUT
    assert stats["pharox/acquire/gave_up"] == 1
    assert storage.renewals < 20  # looked again now and then, not in a loop


class PlainThenSessions(FlowSpider):
    """Three plain requests first (one meets the banned proxy), then the
    sessions."""

    plain_done = 0

    async def start(self) -> Any:
        for number in (1, 2, 3):
            yield scrapy.Request(
                f"{self.base_url}/page/{number}", self.plain, dont_filter=True
            )

    def plain(self, response: Response) -> Any:
        self.plain_done += 1
        if self.plain_done == 3:
            for key in self.keys:
                yield scrapy.Request(
                    f"{self.base_url}/flow/1",
                    meta={"pharox_session": key},
                    dont_filter=True,
                )


@pytest_twisted.inlineCallbacks
def test_sessions_keep_off_a_proxy_cooling_down_for_their_domain(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(3)]
    banned = proxies[0]
    site.banned_proxy_ports.add(banned.port)
    crawler: Crawler = yield crawl(
        PlainThenSessions,
        {
            "PHAROX_PROXIES": [p.url for p in proxies],
            "PHAROX_BAN_SCOPE": "domain",
            "PHAROX_SELECTOR": "first_available",
            "PHAROX_ACQUIRE_TIMEOUT": 3,
        },
        base_url=site.url,
        keys=["k1", "k2", "k3"],  # a third session finds no proxy for the site
    )
    # One ban taught the crawl that the proxy cools down for this site.
    assert len([r for r in site.requests if r.via_proxy_port == banned.port]) == 1
    assert len([page for page in crawler.spider.seen if page["page"] == 6]) == 2
    assert_every_lease_released(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_failures_in_a_row_of_a_session_cool_its_proxy_down(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        DyingProxySpider,
        {
            "PHAROX_PROXIES": [p.url for p in proxies],
            "PHAROX_FAILURES_BEFORE_COOLDOWN": 2,
        },
        base_url=site.url,
        keys=["fragile"],
        proxies=proxies,
    )
    storage = LeaseKeeper.for_crawler(crawler).manager.storage
    (dead,) = [p for p in storage.list_proxies("default") if p.failures]
    assert dead.cooldown_until is not None  # no other request leases it now


class RecordingScheduler(Scheduler):
    """Keeps what each request would be on disk (a JOBDIR queue) as it comes."""

    on_disk: ClassVar[list[bytes]] = []

    def enqueue_request(self, request: scrapy.Request) -> bool:
        RecordingScheduler.on_disk.append(
            pickle.dumps(request.to_dict(spider=self.crawler.spider), protocol=4)
        )
        return super().enqueue_request(request)


@pytest_twisted.inlineCallbacks
def test_no_session_cookie_goes_into_the_scheduler(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy], tmp_path: Path
) -> Any:
    RecordingScheduler.on_disk = []
    password = "s3cret-pass"
    proxies = [start_proxy(username="user", password=password) for _ in range(2)]
    yield crawl(
        BurningSpider,  # a ban mid-flow: its retry goes through the scheduler
        {
            "PHAROX_PROXIES": [p.auth_url for p in proxies],
            "JOBDIR": str(tmp_path / "job"),
            "SCHEDULER": f"{__name__}.RecordingScheduler",
        },
        base_url=site.url,
        keys=["secret"],
        site=site,
    )
    on_disk = b"".join(RecordingScheduler.on_disk)
    assert len(site.visitors) == 2
    for cookie in site.visitors:
        assert f"visitor={cookie}".encode() not in on_disk
    assert password.encode() not in on_disk


class WaitersSpider(scrapy.Spider):
    """Ten slow requests of one session: nine wait for their turn."""

    name = "waiters"

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url

    async def start(self) -> Any:
        for number in range(10):
            yield scrapy.Request(
                f"{self.base_url}/slow?{number}", meta={"pharox_session": "one"}
            )

    def parse(self, response: Response) -> None:
        pass


@pytest_twisted.inlineCallbacks
def test_a_close_ends_the_waits_for_a_session_turn_at_once(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxy = start_proxy()
    with TargetSite(pages=1, delay=2.0) as slow_site:
        started = time.monotonic()
        crawler: Crawler = yield crawl(
            WaitersSpider,
            {"PHAROX_PROXIES": [proxy.url], "CLOSESPIDER_TIMEOUT": 1},
            base_url=slow_site.url,
        )
        took = time.monotonic() - started
    assert took < 6  # the request downloading, not the nine waiting behind it
    assert stats_of(crawler)["finish_reason"] == "closespider_timeout"
    assert_every_lease_released(stats_of(crawler))
