"""Crawls through a database outage, on a throwaway PostgreSQL cluster that the
tests stop and start (``pg_cluster``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from scrapy.crawler import Crawler

from crawl_support import LinkSpider, assert_every_lease_released, crawl, stats_of
from pg_cluster import Cluster, throwaway_cluster
from scrapy_pharox import SqlStorage
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = [pytest.mark.crawl, pytest.mark.postgres]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as server:
        yield server


def outage_during_first_download(
    site: TargetSite, cluster: Cluster, seconds: float
) -> threading.Thread:
    """Stops the cluster once the first request reached the site, for ``seconds``."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not site.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.stop()
        time.sleep(seconds)
        cluster.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest_twisted.inlineCallbacks
def test_a_release_refused_in_an_outage_goes_through_once_the_database_is_back(
    cluster: Cluster,
    start_proxy: Callable[..., ForwardProxy],
    request: pytest.FixtureRequest,
) -> Any:
    storage = SqlStorage(cluster.url, retry_seconds=0.5)
    storage.create_schema()
    proxy = start_proxy()
    with TargetSite(pages=2, delay=1.5) as site:  # 3 pages, 1.5 s each
        outage = outage_during_first_download(site, cluster, seconds=2.5)
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_STORAGE": lambda: storage,
                "PHAROX_POOL": request.node.name,
                "PHAROX_PROXIES": [proxy.url],
                "PHAROX_LEASE_SECONDS": 120,  # far beyond the acquire timeout
                "PHAROX_ACQUIRE_TIMEOUT": 30,
            },
            start_url=site.url + "/",
        )
        outage.join()
    stats = stats_of(crawler)
    assert len(crawler.spider.seen) == 3  # none dropped waiting for the lease
    assert stats["pharox/release/error"] >= 1
    assert stats["pharox/release/recovered"] >= 1
    assert proxy.max_active_requests == 1
    assert_every_lease_released(stats)
    assert stats["pharox/leases/active"] == 0


@pytest_twisted.inlineCallbacks
def test_the_periodic_line_goes_on_through_an_outage_saying_the_storage_is_unreachable(
    cluster: Cluster,
    start_proxy: Callable[..., ForwardProxy],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> Any:
    caplog.set_level(logging.INFO)
    storage = SqlStorage(cluster.url, retry_seconds=0.3)
    storage.create_schema()
    proxy = start_proxy()
    with TargetSite(pages=2, delay=1.5) as site:
        outage = outage_during_first_download(site, cluster, seconds=2.0)
        crawler: Crawler = yield crawl(
            LinkSpider,
            {
                "PHAROX_STORAGE": lambda: storage,
                "PHAROX_POOL": request.node.name,
                "PHAROX_PROXIES": [proxy.url],
                "PHAROX_STATS_INTERVAL": 0.2,
            },
            start_url=site.url + "/",
        )
        outage.join()
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "scrapy_pharox.extension"
    ]
    unreachable = [i for i, line in enumerate(lines) if "storage unreachable" in line]
    assert unreachable, lines
    after = lines[unreachable[-1] + 1 :]
    assert any(f"pools: {request.node.name} " in line for line in after)
    assert "Traceback" not in caplog.text
    assert_every_lease_released(stats_of(crawler))


class StopsTheDatabaseSpider(LinkSpider):
    """Stops the cluster on its first response, then has nothing more to do."""

    cluster: Cluster

    def parse(self, response: Any) -> Any:
        self.cluster.stop()
        return iter(())


@pytest_twisted.inlineCallbacks
def test_a_close_with_the_storage_down_is_one_warning_and_keeps_the_keeper_counts(
    cluster: Cluster,
    start_proxy: Callable[..., ForwardProxy],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> Any:
    storage = SqlStorage(cluster.url, retry_seconds=0.3)
    storage.create_schema()
    proxy = start_proxy()
    StopsTheDatabaseSpider.cluster = cluster
    try:
        with TargetSite(pages=2) as site:
            crawler: Crawler = yield crawl(
                StopsTheDatabaseSpider,
                {
                    "PHAROX_STORAGE": lambda: storage,
                    "PHAROX_POOL": request.node.name,
                    "PHAROX_PROXIES": [proxy.url],
                },
                start_url=site.url + "/",
            )
    finally:
        cluster.start()
    closing = [
        record
        for record in caplog.records
        if "closed with its storage failing" in record.getMessage()
    ]
    assert len(closing) == 1 and closing[0].levelname == "WARNING"
    assert "no pool counts in the stats" in closing[0].getMessage()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    assert "Traceback" not in caplog.text
    stats = stats_of(crawler)
    assert stats["pharox/acquire/leased"] == 1
    assert stats["pharox/pool/snapshot_error"] == 1
    assert not [
        key for key in stats if key.startswith(f"pharox/pool/{request.node.name}")
    ]
    assert_every_lease_released(stats)
