"""LeaseKeeper's outcome reports, built from a test crawler (no crawl)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from scrapy_pharox import LeaseOutcome, OutcomeReport
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
