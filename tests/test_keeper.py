"""LeaseKeeper, built from a test crawler (no crawl): reports, background releases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scrapy import Request, Spider
from scrapy.utils.test import get_crawler

from loop_support import run_on_a_loop
from scrapy_pharox import InMemoryStorage, Lease, LeaseOutcome, OutcomeReport
from scrapy_pharox.keeper import LeaseKeeper


@pytest.fixture
def keeper() -> Iterator[LeaseKeeper]:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_BAN_SCOPE": "domain",
        }
    )
    keeper = LeaseKeeper.for_crawler(crawler)
    yield keeper
    keeper.shutdown()


def test_a_report_carries_outcome_latency_domain_policy_and_a_draw(
    keeper: LeaseKeeper,
) -> None:
    request = Request("http://127.0.0.1:8000/page")
    report = keeper.report(request, LeaseOutcome.BAN, 12.5)
    assert (report.outcome, report.latency_ms, report.domain) == (
        LeaseOutcome.BAN,
        12.5,
        "127.0.0.1",
    )
    assert report.policy == keeper.config.cooldown
    assert 0 <= report.draw <= 1
    assert OutcomeReport.model_validate(report.model_dump()) == report


def test_a_negative_download_latency_is_reported_as_zero(keeper: LeaseKeeper) -> None:
    report = keeper.report(
        Request("http://127.0.0.1:8000/"), LeaseOutcome.SUCCESS, -3.0
    )
    assert report.latency_ms == 0.0


class ReleaseFailsOnTheLoop(InMemoryStorage):
    """An adapter that awaits its releases on the loop, and fails them (a bug)."""

    @property
    def native_async(self) -> bool:
        return True

    async def release_lease_async(
        self, lease: Lease, report: OutcomeReport | None = None
    ) -> bool:
        raise RuntimeError("a bug in the adapter")


def test_a_release_failing_in_the_background_is_counted_and_close_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": ["http://127.0.0.1:3128"],
            "PHAROX_STORAGE": ReleaseFailsOnTheLoop,
        }
    )
    keeper = LeaseKeeper.for_crawler(crawler)
    hooks_run: list[str] = []

    async def hook() -> None:
        hooks_run.append("snapshot")

    keeper.add_close_hook(hook)

    async def scenario() -> None:
        lease = await keeper.lease_for(Request("http://127.0.0.1:8000/"))
        assert await keeper.release(lease, "response")
        await keeper.spider_closed(Spider(name="closing"))

    try:
        run_on_a_loop(scenario())
    finally:
        keeper.shutdown()
    assert hooks_run == ["snapshot"]
    assert keeper.stats.get_value("pharox/release/error") == 1
    assert keeper.stats.get_value("pharox/release/response") == 1
    assert "could not release a lease" in caplog.text
