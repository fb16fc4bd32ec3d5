"""PharoxStatsExtension, built from a test crawler (no crawl): its log line."""

from __future__ import annotations

import logging

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox import PharoxStatsExtension
from scrapy_pharox.keeper import LeaseKeeper


def test_the_log_line_counts_leases_rate_releases_active_and_pool_availability(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128", "http://127.0.0.1:3129"],
            "PHAROX_STATS_INTERVAL": 30,
        }
    )
    extension = PharoxStatsExtension.from_crawler(crawler)
    keeper = LeaseKeeper.for_crawler(crawler)

    async def two_leases_one_back() -> None:
        first = await keeper.lease_for(Request("http://127.0.0.1:8000/1"))
        await keeper.lease_for(Request("http://127.0.0.1:8000/2"))
        await keeper.release(first, "exception")
        await extension._log()

    caplog.set_level(logging.INFO, logger="scrapy_pharox.extension")
    try:
        run_on_a_loop(two_leases_one_back())
    finally:
        keeper.shutdown()
    assert (
        "Leases: 2 (at 4 leases/min), released 1, active 1, waiting 0; "
        "pools: default 1/2 available"
    ) in caplog.text
