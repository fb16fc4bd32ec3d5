"""StatsTally: pharox/* counts reach Scrapy's stats in batches, none lost."""

from __future__ import annotations

import asyncio

from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox.tally import FLUSH_SECONDS, StatsTally


def collector() -> MemoryStatsCollector:
    return MemoryStatsCollector(get_crawler())


def test_counts_reach_the_stats_within_the_flush_interval_on_their_own() -> None:
    stats = collector()

    async def scenario() -> int:
        tally = StatsTally(stats, {})
        tally.inc("pharox/acquire/leased")
        tally.inc("pharox/acquire/leased")
        await asyncio.sleep(FLUSH_SECONDS + 0.5)
        return int(stats.get_value("pharox/acquire/leased"))

    assert run_on_a_loop(scenario()) == 2


def test_flush_hands_over_the_counts_and_gauges_at_once() -> None:
    stats = collector()
    active = [3]

    async def scenario() -> tuple[int, int]:
        tally = StatsTally(stats, {"pharox/leases/active": lambda: active[0]})
        tally.inc("pharox/release/response")
        tally.flush()
        return (
            stats.get_value("pharox/release/response"),
            stats.get_value("pharox/leases/active"),
        )

    assert run_on_a_loop(scenario()) == (1, 3)


def test_counts_after_a_flush_add_to_what_the_stats_already_hold() -> None:
    stats = collector()
    stats.set_value("pharox/acquire/empty", 5)

    async def scenario() -> int:
        tally = StatsTally(stats, {})
        tally.inc("pharox/acquire/empty")
        tally.flush()
        tally.inc("pharox/acquire/empty")
        await asyncio.sleep(FLUSH_SECONDS + 0.5)  # the timer of the first is gone
        tally.flush()
        return int(stats.get_value("pharox/acquire/empty"))

    assert run_on_a_loop(scenario()) == 7
