"""Two crawl processes sharing one PostgreSQL pool of exclusive proxies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crawl_support import assert_every_lease_released
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = pytest.mark.crawl

WORKER = Path(__file__).resolve().parent / "fleet_worker.py"


def run_fleet(storage_url: str, site: TargetSite, proxies: list[str]) -> list[dict]:
    crawls = [
        subprocess.Popen(
            [sys.executable, str(WORKER), site.url + "/", storage_url, *proxies],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for crawl in crawls:
        out, err = crawl.communicate(timeout=180)
        assert crawl.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


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
