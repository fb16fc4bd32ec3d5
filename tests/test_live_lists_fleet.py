"""Two crawl processes on one PostgreSQL database follow one live list: the
claim in the storage lets one of them refresh the pool at a time."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from test_fleet import finished, start_worker

from scrapy_pharox.playground import ForwardProxy, TargetSite

pytestmark = [pytest.mark.crawl, pytest.mark.postgres]

REFRESH = 0.5


def test_two_crawl_processes_on_postgresql_refresh_one_list_one_at_a_time(
    postgresql_url: str, start_proxy: Callable[..., ForwardProxy]
) -> None:
    proxies = [start_proxy() for _ in range(2)]
    with TargetSite(pages=40, delay=0.05) as site:
        site.proxy_list = "".join(f"{proxy.url}\n" for proxy in proxies)
        workers = [
            start_worker(
                postgresql_url,
                site,
                [],  # no PHAROX_PROXIES: the pool is the list's alone
                {
                    "FLEET_SETTINGS": json.dumps(
                        {
                            "PHAROX_PROXIES_URL": f"{site.url}/proxies.txt",
                            "PHAROX_PROXIES_REFRESH": REFRESH,
                            # Who fetched the list, as the site sees it.
                            "USER_AGENT": f"crawl-{number}",
                        }
                    )
                },
            )
            for number in (1, 2)
        ]
        results = [finished(worker) for worker in workers]
        fetches = [(r.at, r.headers.get("User-Agent")) for r in site.list_fetches]
    # Every page in each; the list's fetches count among Scrapy's responses.
    assert [stats["pharox/release/response"] for stats in results] == [41, 41]
    assert sum(stats["response_received_count"] for stats in results) == 82 + len(
        fetches
    )
    assert [proxy.max_active_requests for proxy in proxies] == [1, 1]
    # The pool got its proxies once, from whichever process fetched first.
    assert sum(stats.get("pharox/source/added", 0) for stats in results) == 2
    assert len(fetches) >= 3
    # A refresh passes to the other process only once the holder's claim
    # (1.5 periods) expired: never the two alternating within a period.
    for (earlier, by), (later, then_by) in itertools.pairwise(fetches):
        if by != then_by:
            assert later - earlier > REFRESH, fetches
        else:
            assert later - earlier > REFRESH / 3, fetches
