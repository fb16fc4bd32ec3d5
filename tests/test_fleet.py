"""Crawl processes sharing one PostgreSQL pool of exclusive proxies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import sql_engine
from sqlalchemy import text

from crawl_support import assert_every_lease_released
from scrapy_pharox import ProxyManager, open_storage
from scrapy_pharox.models import Proxy, ProxyPool
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl

WORKER = Path(__file__).resolve().parent / "fleet_worker.py"


def run_fleet(
    storage_url: str,
    site: TargetSite,
    proxies: list[str],
    crawls: int = 2,
    env: dict[str, str] | None = None,
) -> list[dict]:
    """Run ``crawls`` crawl processes of the site at once; their results."""
    started = [
        start_worker(storage_url, site, proxies, env or {}) for _ in range(crawls)
    ]
    return [finished(crawl) for crawl in started]


def finished(crawl: subprocess.Popen[str]) -> dict:
    """The result a crawl process printed, once it exited cleanly."""
    out, err = crawl.communicate(timeout=180)
    assert crawl.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.postgres
def test_two_crawls_on_one_postgresql_pool_never_share_an_exclusive_proxy(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxies = [start_proxy() for _ in range(3)]
    with TargetSite(pages=40, delay=0.02) as site:
        results = run_fleet(postgresql_url, site, [proxy.url for proxy in proxies])
        served = len(site.requests)
    assert [proxy.max_active_requests for proxy in proxies] == [1, 1, 1]
    # Both processes really crawled at the same time, through the same proxies.
    assert all(stats["response_received_count"] == 41 for stats in results)
    assert served == 82 == sum(proxy.requests_count for proxy in proxies)
    for stats in results:
        assert_every_lease_released(stats)
        assert stats["pharox/pool/default/total_proxies"] == 3
        assert stats["pharox/acquire/empty"] > 0


def test_three_crawls_on_three_exclusive_proxies_share_them_fairly(
    sql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    """On PostgreSQL and on a SQLite file alike."""
    proxies = [start_proxy() for _ in range(3)]
    with TargetSite(pages=150, delay=0.01) as site:
        results = run_fleet(sql_url, site, [proxy.url for proxy in proxies], crawls=3)
    assert [proxy.max_active_requests for proxy in proxies] == [1, 1, 1]
    for stats in results:
        assert stats["response_received_count"] == 151
        assert stats["pharox/acquire/gave_up"] == 0
        assert_every_lease_released(stats)
    # While all three crawled (from the last one's first page to the first
    # one's last), each got a fair share of the pages: a third, give or take.
    times = [stats["times"] for stats in results]
    all_in, first_out = max(t[0] for t in times), min(t[-1] for t in times)
    assert first_out > all_in, "a crawl finished before another one got a page"
    shares = [sum(all_in <= at <= first_out for at in t) for t in times]
    assert min(shares) >= 0.5 * max(shares), shares
    # And from the moment all three crawled, the slowest took at most 1.5
    # times as long as the fastest to finish.
    finishes = [t[-1] - all_in for t in times]
    assert max(finishes) <= 1.5 * min(finishes), finishes


@pytest.mark.postgres
def test_a_release_wakes_a_waiting_request_of_another_process_at_once(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxy_url = start_proxy().url
    storage = open_storage(postgresql_url)
    recheck = 30.0  # the waiter's own looks come this far apart
    try:
        pool = storage.add_pool(ProxyPool(name="default"))
        storage.add_proxy(Proxy.from_url(proxy_url, pool_id=pool.id, max_concurrency=1))
        held = ProxyManager(storage).acquire_proxy("default", "holder", 120)
        assert held is not None
        with TargetSite(pages=1) as site:
            waiter = start_worker(
                postgresql_url,
                site,
                [proxy_url],
                env={
                    "FLEET_RECHECK_SECONDS": str(recheck),
                    "FLEET_SETTINGS": json.dumps({"PHAROX_ACQUIRE_TIMEOUT": 120}),
                },
            )
            try:
                wait_until_waiting(postgresql_url)
                released_at = time.time()
                assert ProxyManager(storage).release_proxy(held)
                stats = finished(waiter)
            finally:
                if waiter.poll() is None:
                    waiter.kill()
                    waiter.communicate()
    finally:
        storage.close()
    assert stats["pharox/acquire/empty"] >= 1  # it did wait for the proxy
    assert stats["pharox/acquire/gave_up"] == 0
    assert stats["times"][0] - released_at < recheck / 3


def start_worker(
    storage_url: str, site: TargetSite, proxies: list[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    """One crawl process of the site (see fleet_worker.py)."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), site.url + "/", storage_url, *proxies],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def wait_until_waiting(storage_url: str) -> None:
    """Return once a crawl process registered its consumer (its first acquire
    follows at once) and, where it has a feed, listens for releases; a moment
    later, when its first acquire has missed."""
    consumers = "SELECT count(*) FROM pharox_consumer WHERE name <> 'holder'"
    listening = (
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN pharox_release'"
    )
    with sql_engine(storage_url) as engine:
        for query, seconds in ((consumers, 60.0), (listening, 5.0)):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    if conn.execute(text(query)).scalar_one():
                        break
                time.sleep(0.1)
            else:
                if query == consumers:
                    pytest.fail("the crawl process never asked for a proxy")
    time.sleep(1.0)
