"""Provider gateways in real crawls: PHAROX_GATEWAYS through the playground's
GatewayProxy, which takes the session id in the proxy user name for the exit
and counts what each exit carried, burns exits and ends sessions on time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from scrapy.crawler import Crawler

from crawl_support import LinkSpider, assert_every_lease_released, crawl, stats_of
from scrapy_pharox.playground import GatewayProxy, TargetSite
from session_support import FlowSpider
from session_support import pages_of as pages_of_session

pytestmark = pytest.mark.crawl

PASSWORD = "gw-s3cret"


@pytest.fixture
def site() -> Iterator[TargetSite]:
    with TargetSite(pages=30) as target:
        yield target


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayProxy]]:
    """Start playground gateways on demand; all stop after the test."""
    started: list[GatewayProxy] = []

    def start(**options: Any) -> GatewayProxy:
        proxy = GatewayProxy(
            username_template="cust-42-session-{session}", password=PASSWORD, **options
        ).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def gateway_settings(proxy: GatewayProxy, **entry: Any) -> dict[str, Any]:
    return {
        "PHAROX_GATEWAYS": [
            {"url": proxy.gateway_url, "identities": 3, "max_concurrency": 1, **entry}
        ],
        "CONCURRENT_REQUESTS": 8,
    }


def pages_of(crawler: Crawler) -> dict[str, int]:
    """Each page the spider saw, with its last status."""
    return {page["url"]: page["status"] for page in crawler.spider.seen}


@pytest_twisted.inlineCallbacks
def test_a_gateway_of_three_exits_carries_a_crawl_one_request_per_exit_at_a_time(
    site: TargetSite, start_gateway: Callable[..., GatewayProxy]
) -> Any:
    proxy = start_gateway()
    crawler: Crawler = yield crawl(
        LinkSpider, gateway_settings(proxy), start_url=site.url + "/"
    )
    pages = pages_of(crawler)
    assert len(pages) == 31 and set(pages.values()) == {200}
    exits = proxy.exits
    assert len(exits) == 3  # three session ids, each an exit of its own
    assert all(stats.max_in_flight == 1 for stats in exits.values())
    assert sum(stats.requests for stats in exits.values()) == 31
    assert {request.exit for request in site.requests} == set(exits)
    assert proxy.rejected_count == 0
    assert_every_lease_released(stats_of(crawler))


@pytest_twisted.inlineCallbacks
def test_burned_exits_are_renewed_and_the_crawl_finishes_despite_a_long_cooldown(
    site: TargetSite, start_gateway: Callable[..., GatewayProxy]
) -> Any:
    proxy = start_gateway(burn_after=4)
    crawler: Crawler = yield crawl(
        LinkSpider,
        {
            **gateway_settings(proxy),
            "PHAROX_COOLDOWN_BASE": 3600,
            "PHAROX_COOLDOWN_MAX": 3600,
            "RETRY_TIMES": 5,
        },
        start_url=site.url + "/",
    )
    pages = pages_of(crawler)
    assert len(pages) == 31 and set(pages.values()) == {200}
    exits = proxy.exits
    # Each exit carried at most its 4 requests, then answered 403 once: the
    # ban renewed it, so no request met it burned again.
    assert all(stats.requests <= 4 for stats in exits.values())
    assert len(exits) >= 31 // 4
    assert proxy.burned_requests <= len(exits)
    stats = stats_of(crawler)
    assert stats["pharox/identity/renewed/ban"] == proxy.burned_requests
    assert stats["pharox/identity/renewed"] == proxy.burned_requests
    assert all(proxy.cooldown_until is None for proxy in stored_exits(crawler))
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_exits_are_renewed_before_their_session_seconds_run_out(
    site: TargetSite, start_gateway: Callable[..., GatewayProxy]
) -> Any:
    site.delay = 0.1  # 31 pages over 3 exits: about a second
    proxy = start_gateway(session_seconds=0.5)
    crawler: Crawler = yield crawl(
        LinkSpider,
        gateway_settings(proxy, session_seconds=0.5),
        start_url=site.url + "/",
    )
    pages = pages_of(crawler)
    assert len(pages) == 31 and set(pages.values()) == {200}
    assert proxy.expired_requests == 0
    exits = proxy.exits
    assert all(s.last_seen - s.first_seen < 0.5 for s in exits.values())
    stats = stats_of(crawler)
    assert stats["pharox/identity/renewed/expiry"] >= 3
    assert len(exits) == 3 + stats["pharox/identity/renewed/expiry"]
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_gateway_s_password_is_in_no_log_line_nor_stat(
    site: TargetSite,
    caplog: pytest.LogCaptureFixture,
    start_gateway: Callable[..., GatewayProxy],
) -> Any:
    caplog.set_level(logging.DEBUG)
    proxy = start_gateway(burn_after=10)
    crawler: Crawler = yield crawl(
        LinkSpider, gateway_settings(proxy), start_url=site.url + "/"
    )
    stats = stats_of(crawler)
    assert stats["pharox/identity/renewed/ban"] >= 1  # renewals are logged
    assert any("renewed gateway exit" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]
    assert PASSWORD not in repr(stats)
    # Nor does it reach the site.
    assert not [r for r in site.requests if PASSWORD in repr(r.headers)]


def stored_exits(crawler: Crawler) -> list[Any]:
    from scrapy_pharox.keeper import LeaseKeeper

    storage = LeaseKeeper.for_crawler(crawler).manager.storage
    return storage.list_proxies("default")


@pytest_twisted.inlineCallbacks
def test_a_session_on_a_burned_exit_moves_on_with_it_to_a_fresh_cookie(
    site: TargetSite, start_gateway: Callable[..., GatewayProxy]
) -> Any:
    proxy = start_gateway(burn_after=4)
    keys = ["flow-a", "flow-b"]
    crawler: Crawler = yield crawl(
        FlowSpider, gateway_settings(proxy), base_url=site.url, keys=keys
    )
    assert site.refused == []  # no cookie ever came back through another exit
    for key in keys:
        pages = pages_of_session(crawler.spider.seen, key)
        assert [page["page"] for page in pages] == [1, 2, 3, 4, 5, 6]
        assert {page["status"] for page in pages} == {200}
    stats = stats_of(crawler)
    assert stats["pharox/session/rotated/ban"] == proxy.burned_requests >= 1
    assert stats["pharox/identity/renewed/ban"] == proxy.burned_requests
    assert all(p.cooldown_until is None for p in stored_exits(crawler))
    assert_every_lease_released(stats)


@pytest_twisted.inlineCallbacks
def test_a_session_rotates_with_its_exit_before_the_exit_s_time_runs_out(
    site: TargetSite, start_gateway: Callable[..., GatewayProxy]
) -> Any:
    proxy = start_gateway(session_seconds=0.5)
    keys = ["flow-a", "flow-b"]
    crawler: Crawler = yield crawl(
        FlowSpider,
        {
            **gateway_settings(proxy, session_seconds=0.5),
            # A session's IP waits this long between two requests to the
            # site: a flow of 6 pages outlasts an exit's 0.5 s.
            "PHAROX_REUSE_DELAY": 0.15,
        },
        base_url=site.url,
        keys=keys,
    )
    assert proxy.expired_requests == 0
    assert site.refused == []
    for key in keys:
        pages = pages_of_session(crawler.spider.seen, key)
        assert [page["page"] for page in pages] == [1, 2, 3, 4, 5, 6]
        assert {page["status"] for page in pages} == {200}
    assert all(s.last_seen - s.first_seen < 0.5 for s in proxy.exits.values())
    stats = stats_of(crawler)
    assert stats["pharox/session/rotated/identity"] >= 2
    assert stats["pharox/identity/renewed/expiry"] >= 2
    assert_every_lease_released(stats)
