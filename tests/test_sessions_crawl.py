"""Sessions in real crawls: one proxy and one cookie jar per key, kept by
follow-ups, rotated as a unit, against a site that ties its cookie to an IP."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.http import Response

from crawl_support import assert_every_lease_released, crawl, stats_of
from scrapy_pharox.keeper import LeaseKeeper
from scrapy_pharox.playground import ForwardProxy, TargetSite
from session_support import FlowSpider, pages_of, seen

pytestmark = pytest.mark.crawl


def storage_after(crawler: Crawler) -> Any:
    return LeaseKeeper.for_crawler(crawler).manager.storage


def ports_of(pages: list[dict[str, Any]]) -> list[int]:
    return [page["port"] for page in pages]


@pytest_twisted.inlineCallbacks
def test_concurrent_flows_each_keep_one_proxy_and_one_cookie_and_none_is_refused(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(4)]
    keys = [f"flow-{n}" for n in range(4)]
    crawler: Crawler = yield crawl(
        FlowSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=keys,
    )
    seen_pages = crawler.spider.seen
    assert site.refused == []
    bound_ports = set()
    for key in keys:
        pages = pages_of(seen_pages, key)
        assert [page["page"] for page in pages] == [1, 2, 3, 4, 5, 6]
        assert {page["status"] for page in pages} == {200}
        (port,) = set(ports_of(pages))
        bound_ports.add(port)
        # The first page got the cookie; every later one carried it back.
        assert pages[0]["cookie"] is None
        (cookie,) = {page["cookie"] for page in pages[1:]}
        assert site.visitors[cookie] == port
    assert len(bound_ports) == 4  # an exclusive pool: one IP per session
    assert len(site.visitors) == 4
    stats = stats_of(crawler)
    assert stats["pharox/session/created"] == 4
    assert "pharox/session/rotated" not in stats
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_sessions_on_an_exclusive_pool_never_share_a_proxy_with_plain_requests(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class MixedSpider(FlowSpider):
        async def start(self) -> Any:
            async for request in super().start():
                yield request
            for number in range(1, 21):
                yield scrapy.Request(f"{self.base_url}/page/{number}", self.plain)

        def plain(self, response: Response) -> None:
            self.seen.append(seen(response))

    proxies = [start_proxy() for _ in range(3)]
    crawler: Crawler = yield crawl(
        MixedSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=["login"],
    )
    flow = pages_of(crawler.spider.seen, "login")
    (session_port,) = set(ports_of(flow))
    plain = [page for page in crawler.spider.seen if page["key"] is None]
    assert len(plain) == 20
    assert session_port not in ports_of(plain)
    assert max(proxy.max_active_requests for proxy in proxies) == 1
    assert_every_lease_released(stats_of(crawler))


class LeavingSpider(FlowSpider):
    """Page 2 of the flow also yields a request that leaves the session."""

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        yield from super().parse(response)
        if response.url.endswith("/flow/2"):
            yield scrapy.Request(
                f"{self.base_url}/flow/1",
                self.outside,
                meta={"pharox_session": None},
                dont_filter=True,
            )

    def outside(self, response: Response) -> None:
        self.seen.append({**seen(response), "outside": True})


@pytest_twisted.inlineCallbacks
def test_follow_ups_stay_in_their_session_unless_they_name_none(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(3)]
    crawler: Crawler = yield crawl(
        LeavingSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=["cart"],
    )
    flow = pages_of(crawler.spider.seen, "cart")
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    assert len(set(ports_of(flow))) == 1
    (outside,) = [page for page in crawler.spider.seen if page.get("outside")]
    # Neither the session's proxy nor its cookie: Scrapy's own jar, empty.
    assert outside["port"] not in ports_of(flow)
    assert outside["cookie"] is None
    assert site.refused == []


class BurningSpider(FlowSpider):
    """After page 3, the proxy that carried it starts refusing everything."""

    def __init__(self, *args: Any, site: TargetSite, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        if response.url.endswith("/flow/3"):
            self.site.banned_proxy_ports.add(response.meta["pharox_lease"].proxy.port)
        yield from super().parse(response)


@pytest_twisted.inlineCallbacks
def test_a_proxy_refusing_mid_flow_moves_the_session_to_another_with_fresh_cookies(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        BurningSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=["search"],
        site=site,
    )
    flow = pages_of(crawler.spider.seen, "search")
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    assert {page["status"] for page in flow} == {200}
    first, second = ports_of(flow)[0], ports_of(flow)[3]
    assert ports_of(flow) == [first] * 3 + [second] * 3
    assert first != second
    # The retried page 4 went out with the new generation's empty jar.
    old, new = flow[1]["cookie"], flow[4]["cookie"]
    assert [page["cookie"] for page in flow] == [None, old, old, None, new, new]
    assert old != new
    assert site.refused == []
    stats = stats_of(crawler)
    assert stats["pharox/session/rotated"] == 1
    assert stats["pharox/session/rotated/ban"] == 1
    assert stats["retry/reason_count/pharox_ban"] == 1
    (banned,) = [p for p in storage_after(crawler).list_proxies("default") if p.bans]
    assert banned.port == first
    assert banned.cooldown_until is not None
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_session_moves_to_another_proxy_after_its_max_uses(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(3)]
    crawler: Crawler = yield crawl(
        FlowSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies], "PHAROX_SESSION_MAX_USES": 2},
        base_url=site.url,
        keys=["paged"],
    )
    flow = pages_of(crawler.spider.seen, "paged")
    ports = ports_of(flow)
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    assert ports[0] == ports[1] != ports[2] == ports[3] != ports[4] == ports[5]
    # Each generation starts with an empty jar: the site never saw a stray cookie.
    assert [page["cookie"] is None for page in flow] == [True, False] * 3
    assert site.refused == []
    stats = stats_of(crawler)
    assert stats["pharox/session/rotated/max_uses"] == 2
    assert stats["pharox/session/created"] == 1
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_session_moves_to_another_proxy_after_its_max_age(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=1, delay=0.4) as slow_site:  # flows are not delayed
        crawler: Crawler = yield crawl(
            SlowFlowSpider,
            {"PHAROX_PROXIES": [p.url for p in proxies], "PHAROX_SESSION_MAX_AGE": 1},
            base_url=slow_site.url,
            keys=["aging"],
        )
        assert slow_site.refused == []
    flow = pages_of(crawler.spider.seen, "aging")
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    stats = stats_of(crawler)
    assert stats["pharox/session/rotated/max_age"] >= 1
    assert len(set(ports_of(flow))) == 2
    assert_every_lease_released(stats)


class SlowFlowSpider(FlowSpider):
    """Waits on ``/slow`` between two flow pages, so the session ages."""

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.seen.append(seen(response))
        page = int(response.url.rsplit("/", 1)[1])
        if page < self.last:
            yield scrapy.Request(
                f"{self.base_url}/slow",
                self.slept,
                cb_kwargs={"next_page": page + 1},
                meta={"pharox_session": None},
                dont_filter=True,
            )

    def slept(self, response: Response, next_page: int) -> scrapy.Request:
        return scrapy.Request(
            f"{self.base_url}/flow/{next_page}",
            meta={"pharox_session": "aging"},
            dont_filter=True,
        )


@pytest_twisted.inlineCallbacks
def test_a_failed_session_check_rotates_the_session(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class CheckingSpider(FlowSpider):
        def pharox_session_check(self, response: Response) -> bool:
            return not response.url.endswith("/flow/3")  # "logged out" on page 3

    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        CheckingSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=["account"],
    )
    flow = pages_of(crawler.spider.seen, "account")
    ports = ports_of(flow)
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    assert ports[:3] == [ports[0]] * 3
    assert ports[3:] == [ports[3]] * 3 != ports[:3]
    assert flow[3]["cookie"] is None
    assert site.refused == []
    assert stats_of(crawler)["pharox/session/rotated/check"] == 1


@pytest_twisted.inlineCallbacks
def test_a_spider_may_name_the_session_of_requests_that_name_none(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class KeyedSpider(FlowSpider):
        async def start(self) -> Any:
            for key in self.keys:
                yield scrapy.Request(
                    f"{self.base_url}/flow/1?user={key}", dont_filter=True
                )

        def pharox_session_key(self, request: scrapy.Request) -> str | None:
            return request.url.partition("?user=")[2] or None

    proxies = [start_proxy() for _ in range(2)]
    crawler: Crawler = yield crawl(
        KeyedSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=["ann", "bob"],
    )
    for key in ("ann", "bob"):
        flow = pages_of(crawler.spider.seen, key)
        assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
        assert len(set(ports_of(flow))) == 1
    assert site.refused == []


@pytest_twisted.inlineCallbacks
def test_sessions_are_parked_at_close_and_resumed_by_the_next_crawl(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    from scrapy_pharox import InMemoryStorage

    storage = InMemoryStorage()
    proxies = [start_proxy() for _ in range(3)]
    settings = {
        "PHAROX_PROXIES": [p.url for p in proxies],
        "PHAROX_STORAGE": lambda: storage,  # settings copy values
    }
    first: Crawler = yield crawl(
        FlowSpider, settings, base_url=site.url, keys=["resume"], last=3
    )
    assert_every_lease_released(stats_of(first))
    (parked,) = storage.list_sessions("default")
    assert parked.lease_id is None
    assert parked.uses == 3
    second: Crawler = yield crawl(
        FlowSpider, settings, base_url=site.url, keys=["resume"], first=4
    )
    before = pages_of(first.spider.seen, "resume")
    after = pages_of(second.spider.seen, "resume")
    assert [page["page"] for page in after] == [4, 5, 6]
    assert set(ports_of(after)) == set(ports_of(before))
    # The first page of the second crawl already carried the saved cookie.
    assert {page["cookie"] for page in after} == {before[-1]["cookie"]}
    assert site.refused == []
    assert stats_of(second)["pharox/session/resumed"] == 1
    assert_every_lease_released(stats_of(second))


@pytest_twisted.inlineCallbacks
def test_no_cookie_value_nor_proxy_password_is_logged_or_in_stats(
    site: TargetSite,
    start_proxy: Callable[..., ForwardProxy],
    caplog: pytest.LogCaptureFixture,
) -> Any:
    password = "s3cret-pass"
    proxies = [start_proxy(username="user", password=password) for _ in range(2)]
    caplog.set_level(logging.DEBUG)
    crawler: Crawler = yield crawl(
        BurningSpider,
        {"PHAROX_PROXIES": [p.auth_url for p in proxies], "COOKIES_DEBUG": True},
        base_url=site.url,
        keys=["secret"],
        site=site,
    )
    cookies = list(site.visitors)
    assert len(cookies) == 2  # one per generation
    logged = "\n".join(record.getMessage() for record in caplog.records)
    shown_stats = repr(stats_of(crawler))
    for secret in (password, *cookies):
        shown = re.compile(rf"(?<![\w-]){re.escape(secret)}(?![\w-])")
        assert not shown.search(logged)
        assert not shown.search(shown_stats)
    for session in storage_after(crawler).list_sessions("default"):
        assert not any(value in repr(session) for value in cookies)


@pytest_twisted.inlineCallbacks
def test_a_session_lease_shorter_than_a_download_does_not_lapse_under_its_request(
    start_proxy: Callable[..., ForwardProxy],
) -> Any:
    class SlowSessionSpider(scrapy.Spider):
        name = "slow-session"

        def __init__(self, base_url: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.base_url = base_url
            self.seen: list[dict[str, Any]] = []

        async def start(self) -> Any:
            yield scrapy.Request(
                f"{self.base_url}/slow", meta={"pharox_session": "long"}
            )
            yield scrapy.Request(f"{self.base_url}/page/1")

        def parse(self, response: Response) -> None:
            self.seen.append({"url": response.url, "status": response.status})

    proxy = start_proxy()
    with TargetSite(pages=1, delay=1.0) as slow_site:  # /slow takes a second
        crawler: Crawler = yield crawl(
            SlowSessionSpider,
            {
                "PHAROX_PROXIES": [proxy.url],
                "PHAROX_SESSION_IDLE_SECONDS": 0.1,
                "DOWNLOAD_TIMEOUT": 2,
            },
            base_url=slow_site.url,
        )
    assert sorted(page["url"].rsplit("/", 1)[1] for page in crawler.spider.seen) == [
        "1",
        "slow",
    ]
    # The plain request waited for the session's lease to lapse after its
    # request, not under it: never two requests at once on the exclusive proxy.
    assert proxy.max_active_requests == 1
    assert_every_lease_released(stats_of(crawler))


class DyingProxySpider(FlowSpider):
    """After page 1, the proxy that carried it goes away (connections refused)."""

    def __init__(self, *args: Any, proxies: list[ForwardProxy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxies = proxies

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        if response.url.endswith("/flow/1"):
            port = response.meta["pharox_lease"].proxy.port
            (dying,) = [proxy for proxy in self.proxies if proxy.port == port]
            dying.stop()
        yield from super().parse(response)


@pytest_twisted.inlineCallbacks
def test_failures_in_a_row_move_the_session_to_another_proxy(
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
    flow = pages_of(crawler.spider.seen, "fragile")
    assert [page["page"] for page in flow] == [1, 2, 3, 4, 5, 6]
    ports = ports_of(flow)
    assert ports[1:] == [ports[1]] * 5 != [ports[0]] * 5
    assert flow[1]["cookie"] is None  # the new generation's jar was empty
    assert site.refused == []
    stats = stats_of(crawler)
    assert stats["pharox/outcome/failure"] == 2
    assert stats["pharox/session/rotated/failure"] == 1
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_rate_limit_rests_the_session_on_its_proxy_instead_of_moving_it(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(2)]
    for proxy in proxies:
        site.throttled_proxy_ports[proxy.port] = "1"
    crawler: Crawler = yield crawl(
        FlowSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies], "RETRY_TIMES": 2},
        base_url=site.url,
        keys=["patient"],
    )
    tries = [request for request in site.requests if request.path == "/flow/1"]
    assert len(tries) == 3  # the first and its two retries, all 429
    assert len({request.via_proxy_port for request in tries}) == 1
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
    assert min(gaps) >= 0.9  # each waited the second Retry-After asked for
    stats = stats_of(crawler)
    assert stats["pharox/outcome/throttled"] == 3
    assert "pharox/session/rotated" not in stats
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_cookies_given_with_a_session_request_join_its_jar_only(
    site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    class GivenCookieSpider(FlowSpider):
        async def start(self) -> Any:
            yield scrapy.Request(
                f"{self.base_url}/flow/1",
                meta={"pharox_session": "given"},
                cookies={"token": "t0ken-given"},
                dont_filter=True,
            )
            yield scrapy.Request(f"{self.base_url}/page/1", self.plain)

        def plain(self, response: Response) -> None:
            self.seen.append(seen(response))

    proxies = [start_proxy() for _ in range(2)]
    yield crawl(
        GivenCookieSpider,
        {"PHAROX_PROXIES": [p.url for p in proxies]},
        base_url=site.url,
        keys=[],
    )
    flow = [r for r in site.requests if r.path.startswith("/flow/")]
    assert len(flow) == 6
    # On the request it came with and on every follow-up of its session...
    assert all("token=t0ken-given" in r.headers.get("Cookie", "") for r in flow)
    # ...and on no request outside it.
    (plain,) = [r for r in site.requests if r.path == "/page/1"]
    assert "t0ken-given" not in plain.headers.get("Cookie", "")
