"""Health checks through local proxies, with Scrapy's own downloader.

Run over every adapter by the parametrized ``storage`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from scrapy.crawler import CrawlerRunner

from crawl_support import BASE_SETTINGS
from scrapy_pharox import (
    CheckResult,
    CheckSummary,
    HealthCheckConfig,
    IStorage,
    PharoxSettingError,
    Proxy,
    ProxyStatus,
    bootstrap_pool,
    start_health_check,
)
from scrapy_pharox.playground import ForwardProxy, TargetSite, free_port

pytestmark = pytest.mark.crawl

POOL = "checked"


def add_proxies(storage: IStorage, *urls: str) -> list[Proxy]:
    pool = bootstrap_pool(storage, name=POOL)
    return [storage.add_proxy(Proxy.from_url(url, pool_id=pool.id)) for url in urls]


def runner(url: str, **settings: Any) -> CrawlerRunner:
    return CrawlerRunner({**BASE_SETTINGS, "PHAROX_CHECK_URL": url, **settings})


def by_port(storage: IStorage) -> dict[int, Proxy]:
    return {proxy.port: proxy for proxy in storage.list_proxies(POOL)}


def results_by_port(summary: CheckSummary) -> dict[int, CheckResult]:
    return {result.proxy.port: result for result in summary.results}


@pytest_twisted.inlineCallbacks
def test_a_working_proxy_is_active_and_a_dead_port_inactive(
    storage: IStorage, site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    working = start_proxy()
    dead_port = free_port()
    add_proxies(storage, working.url, f"http://127.0.0.1:{dead_port}")
    before = by_port(storage)
    seen: list[int] = []

    run = start_health_check(
        runner(site.url + "/page/1"),
        storage,
        POOL,
        on_result=lambda result, summary: seen.append(len(summary.results)),
    )
    yield run.done

    results = results_by_port(run.summary)
    assert results[working.port].status is ProxyStatus.ACTIVE
    assert results[working.port].detail == "HTTP 200"
    assert results[working.port].latency_ms is not None
    assert results[dead_port].status is ProxyStatus.INACTIVE
    assert "refused" in results[dead_port].detail.lower()
    assert run.summary.total == 2
    assert run.summary.counts == {"active": 1, "slow": 0, "inactive": 1, "skipped": 0}
    assert seen == [1, 2]
    assert working.requests_count == 1
    assert [request.path for request in site.requests] == ["/page/1"]

    stored = by_port(storage)
    assert stored[working.port].status is ProxyStatus.ACTIVE
    assert stored[working.port].latency_ms == results[working.port].latency_ms
    assert stored[working.port].checked_at > before[working.port].checked_at
    assert stored[dead_port].status is ProxyStatus.INACTIVE
    assert stored[dead_port].checked_at > before[dead_port].checked_at


@pytest_twisted.inlineCallbacks
def test_a_proxy_in_front_of_a_slow_site_is_slow(
    storage: IStorage, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxy = start_proxy()
    add_proxies(storage, proxy.url)
    with TargetSite(pages=1, delay=0.3) as slow_site:
        run = start_health_check(
            runner(slow_site.url + "/", PHAROX_CHECK_SLOW_MS=100), storage, POOL
        )
        yield run.done

    (result,) = run.summary.results
    assert result.status is ProxyStatus.SLOW
    assert result.latency_ms is not None and result.latency_ms >= 300
    (stored,) = storage.list_proxies(POOL)
    assert stored.status is ProxyStatus.SLOW
    assert stored.latency_ms == result.latency_ms


@pytest_twisted.inlineCallbacks
def test_inactive_proxies_come_back_and_bad_answers_make_them_inactive(
    storage: IStorage, site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    working = start_proxy()
    locked = start_proxy(username="user", password="s3cret-pw")
    hanging = start_proxy(mode="hang")
    proxies = add_proxies(
        storage,
        working.url,
        f"http://user:wrong-pw@127.0.0.1:{locked.port}",
        hanging.url,
    )
    storage.set_proxy_status(proxies[0].id, ProxyStatus.INACTIVE)

    run = start_health_check(
        runner(site.url + "/", PHAROX_CHECK_TIMEOUT=0.5), storage, POOL
    )
    yield run.done

    results = results_by_port(run.summary)
    assert results[working.port].status is ProxyStatus.ACTIVE
    assert results[locked.port].status is ProxyStatus.INACTIVE
    assert results[locked.port].detail == "HTTP 407"
    assert results[hanging.port].status is ProxyStatus.INACTIVE
    assert "TimeoutError" in results[hanging.port].detail
    assert "wrong-pw" not in repr(run.summary.results)
    assert by_port(storage)[working.port].status is ProxyStatus.ACTIVE


@pytest_twisted.inlineCallbacks
def test_banned_proxies_and_unusable_protocols_are_not_checked(
    storage: IStorage, site: TargetSite, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    banned = start_proxy()
    proxies = add_proxies(storage, banned.url, "socks5://127.0.0.1:1080")
    storage.set_proxy_status(proxies[0].id, ProxyStatus.BANNED)

    run = start_health_check(runner(site.url + "/"), storage, POOL)
    yield run.done

    assert run.summary.counts == {"active": 0, "slow": 0, "inactive": 0, "skipped": 2}
    details = sorted(result.detail for result in run.summary.results)
    assert details == ["banned: not checked", "socks5: not in PHAROX_PROTOCOLS"]
    assert banned.requests_count == 0
    assert {proxy.status for proxy in storage.list_proxies(POOL)} == {
        ProxyStatus.BANNED,
        ProxyStatus.ACTIVE,
    }


@pytest_twisted.inlineCallbacks
def test_no_more_requests_at_once_than_the_concurrency_setting(
    storage: IStorage, start_proxy: Callable[..., ForwardProxy]
) -> Any:
    proxies = [start_proxy() for _ in range(6)]
    add_proxies(storage, *(proxy.url for proxy in proxies))
    with TargetSite(pages=1, delay=0.2) as site:
        started = time.monotonic()
        run = start_health_check(
            runner(site.url + "/", PHAROX_CHECK_CONCURRENCY=2), storage, POOL
        )
        yield run.done
        elapsed = time.monotonic() - started
        most_at_once = site.max_open_connections

    assert run.summary.counts["active"] == 6
    assert sum(proxy.requests_count for proxy in proxies) == 6
    assert most_at_once == 2
    # Six requests of 0.2 s, two at a time: three rounds at least.
    assert elapsed >= 0.6


@pytest_twisted.inlineCallbacks
def test_an_unknown_pool_checks_nothing(storage: IStorage, site: TargetSite) -> Any:
    run = start_health_check(runner(site.url + "/"), storage, "nowhere")
    yield run.done
    assert run.summary.total == 0
    assert run.summary.results == []
    assert site.requests == []


def test_a_check_without_a_url_names_the_setting(storage: IStorage) -> None:
    with pytest.raises(PharoxSettingError, match="PHAROX_CHECK_URL is not set"):
        start_health_check(CrawlerRunner(BASE_SETTINGS), storage, POOL)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PHAROX_CHECK_URL", "ftp://example.com/", "PHAROX_CHECK_URL must be an http"),
        ("PHAROX_CHECK_SLOW_MS", "0", "PHAROX_CHECK_SLOW_MS must be a number > 0"),
        ("PHAROX_CHECK_TIMEOUT", "soon", "PHAROX_CHECK_TIMEOUT: invalid value"),
        ("PHAROX_CHECK_TIMEOUT", "1e9", "PHAROX_CHECK_TIMEOUT .* 7 days"),
        ("PHAROX_CHECK_CONCURRENCY", "0", "PHAROX_CHECK_CONCURRENCY must be a whole"),
    ],
)
def test_bad_check_settings_are_named(name: str, value: str, message: str) -> None:
    from scrapy.settings import Settings

    with pytest.raises(PharoxSettingError, match=message):
        HealthCheckConfig.from_settings(Settings({name: value}))


def test_check_settings_have_defaults() -> None:
    from scrapy.settings import Settings

    check = HealthCheckConfig.from_settings(Settings())
    assert (check.url, check.slow_ms, check.timeout, check.concurrency) == (
        None,
        2000.0,
        10.0,
        8,
    )


RUN_IN_A_PROCESS = """
from scrapy_pharox.playground import ForwardProxy, TargetSite
from scrapy_pharox import InMemoryStorage, Proxy, bootstrap_pool, run_health_check

storage = InMemoryStorage()
pool = bootstrap_pool(storage, name="p")
with TargetSite(pages=1) as site, ForwardProxy() as proxy:
    storage.add_proxy(Proxy.from_url(proxy.url, pool_id=pool.id))
    summary = run_health_check(
        storage, "p", {"PHAROX_CHECK_URL": site.url + "/", "LOG_ENABLED": False}
    )
print(summary.counts, [result.detail for result in summary.results])
"""


def test_run_health_check_runs_a_crawler_process_of_its_own(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN_IN_A_PROCESS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "{'active': 1, 'slow': 0, 'inactive': 0, 'skipped': 0} ['HTTP 200']"
    )
