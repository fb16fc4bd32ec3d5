"""A reuse delay held across two crawl processes sharing one PostgreSQL pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crawl_support import (
    assert_every_lease_released,
    closest_arrival_after_lease,
    closest_lease_reuse,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = [pytest.mark.crawl, pytest.mark.postgres]

WORKER = Path(__file__).resolve().parent / "fleet_worker.py"


def test_two_crawl_processes_keep_one_reuse_delay_per_proxy_and_host(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxies = [start_proxy() for _ in range(3)]
    settings = {"PHAROX_REUSE_DELAY": 0.5, "PHAROX_PROXY_MAX_CONCURRENCY": 0}
    with TargetSite(pages=11) as site:
        started = time.monotonic()
        crawls = [
            subprocess.Popen(
                [sys.executable, str(WORKER), site.url + "/", postgresql_url]
                + [proxy.url for proxy in proxies],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "FLEET_SETTINGS": json.dumps(settings)},
            )
            for _ in range(2)
        ]
        results = []
        for process in crawls:
            out, err = process.communicate(timeout=180)
            assert process.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        took = time.monotonic() - started
        requests = list(site.requests)
    # Proxies without a concurrency limit: only the delay spaces them.
    assert len(requests) == 24
    assert all(stats["response_received_count"] == 12 for stats in results)
    # By the database's clock, from one lease to the next, whichever process
    # took them: the delay exactly; at the site, no request before the delay
    # since the lease before it (the server's clock and ours are one clock).
    seen = [page for stats in results for page in stats["seen"]]
    assert closest_lease_reuse(seen) >= 0.5 - 1e-6
    assert closest_arrival_after_lease(requests, seen) >= 0.5 - 1e-3
    # 24 requests to one host through 3 proxies, one per proxy per 0.5 s: the
    # fleet ran near 6 a second, not faster.
    assert took >= (24 / 3 - 1) * 0.5
    assert sum(stats["pharox/acquire/paced"] for stats in results) > 0
    for stats in results:
        assert_every_lease_released(stats)
