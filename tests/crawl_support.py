"""What the end-to-end crawl tests share: local servers, a spider, a crawl helper,
and ``python -m scrapy`` in a subprocess.

Test modules import the fixtures from here explicitly.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import scrapy
from scrapy.crawler import Crawler, CrawlerRunner
from scrapy.http import Response
from twisted.internet.defer import Deferred

from scrapy_pharox.playground import ForwardProxy, TargetSite
from scrapy_pharox.playground.site import RecordedRequest

REPO = Path(__file__).resolve().parent.parent

BASE_SETTINGS: dict[str, Any] = {
    "ADDONS": {"scrapy_pharox.Addon": 300},
    "TELNETCONSOLE_ENABLED": False,
    "REMOTE_CONTROL_ENABLED": False,
    "ROBOTSTXT_OBEY": False,
    "LOG_LEVEL": "DEBUG",
    "DOWNLOAD_TIMEOUT": 5,
    "PHAROX_STATS_INTERVAL": 0,
    "PHAROX_ACQUIRE_TIMEOUT": 30,
    "CONCURRENT_REQUESTS": 8,
}


class LinkSpider(scrapy.Spider):
    """Follows every same-site link from ``start_url``; records what it saw."""

    name = "links"

    def __init__(self, start_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_url = start_url
        self.seen: list[dict[str, Any]] = []

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(self.start_url)

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        lease = response.meta.get("pharox_lease")
        self.seen.append(
            {
                "url": response.url,
                "status": response.status,
                "lease_id": lease.id if lease else None,
                "proxy": lease.proxy.address if lease else None,
                "country": lease.proxy.country if lease else None,
                "host": urlsplit(response.url).hostname,
                # By the storage's clock: what a reuse delay is measured by.
                "acquired_at": lease.acquired_at.timestamp() if lease else None,
            }
        )
        yield from response.follow_all(css="a", callback=self.parse)


def closest_gap(moments: Iterable[tuple[Hashable, float]]) -> float:
    """The shortest time between two moments of one key."""
    by_key: dict[Hashable, list[float]] = {}
    for key, moment in moments:
        by_key.setdefault(key, []).append(moment)
    return min(
        later - earlier
        for times in by_key.values()
        for earlier, later in itertools.pairwise(sorted(times))
    )


def closest_reuse(requests: Iterable[RecordedRequest]) -> float:
    """The shortest time between two requests of one proxy to one host, as
    the site received them."""
    return closest_gap(((r.via_proxy_port, r.host), r.at) for r in requests)


def closest_lease_reuse(seen: Iterable[dict[str, Any]]) -> float:
    """The shortest time, by the storage's clock, between two leases of one
    proxy for one host, over the pages a LinkSpider saw."""
    return closest_gap(((p["proxy"], p["host"]), p["acquired_at"]) for p in seen)


def closest_arrival_after_lease(
    requests: Iterable[RecordedRequest], seen: Iterable[dict[str, Any]]
) -> float:
    """The shortest time from a lease of one proxy for one host to the arrival
    at the site of the next request that proxy carried there.

    A request reaches the site after its own lease, so the k-th arrival of a
    key comes no earlier than its k-th lease: with leases a reuse delay apart,
    each arrival but the first is at least that delay after the lease before
    it, whatever the requests' trips took. Both are read by the epoch clock.
    """
    leases: dict[Hashable, list[float]] = {}
    for page in seen:
        port = int(page["proxy"].rpartition(":")[2])
        leases.setdefault((port, page["host"]), []).append(page["acquired_at"])
    arrivals: dict[Hashable, list[float]] = {}
    for request in requests:
        key = (request.via_proxy_port, request.host)
        arrivals.setdefault(key, []).append(request.received_at)
    assert arrivals.keys() == leases.keys()
    gaps = []
    for key, times in arrivals.items():
        leased = sorted(leases[key])
        assert len(leased) == len(times), key
        gaps += [
            arrived - lease
            for lease, arrived in zip(leased, sorted(times)[1:], strict=False)
        ]
    return min(gaps)


def crawl(
    spider_class: type[scrapy.Spider], settings: dict[str, Any], **spider_kwargs: Any
) -> Deferred[Crawler]:
    """Run one crawl on the test reactor; the Deferred fires with the crawler."""
    runner = CrawlerRunner({**BASE_SETTINGS, **settings})
    crawler = runner.create_crawler(spider_class)
    done: Deferred[Any] = crawler.crawl(**spider_kwargs)
    return done.addCallback(lambda _: crawler)


def stats_of(crawler: Crawler) -> dict[str, Any]:
    assert crawler.stats is not None
    return crawler.stats.get_stats()


def assert_every_lease_released(stats: dict[str, Any]) -> None:
    """The bookkeeping invariant of every crawl."""
    released = sum(
        stats.get(f"pharox/release/{reason}", 0)
        for reason in ("response", "exception", "closed")
    )
    assert stats["pharox/acquire/leased"] == released
    assert stats["pharox/leases/active"] == 0


def run_scrapy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m scrapy ARGS`` with this checkout first on the path."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT")
    }
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "scrapy", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed, checked to be just that."""
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


@pytest.fixture
def site() -> Iterator[TargetSite]:
    with TargetSite(pages=30) as target:
        yield target


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., ForwardProxy]]:
    """Start forward proxies on demand; all stop after the test."""
    started: list[ForwardProxy] = []

    def start(**options: Any) -> ForwardProxy:
        proxy = ForwardProxy(**options).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
