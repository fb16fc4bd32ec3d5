"""Health checks: every proxy of a pool fetches ``PHAROX_CHECK_URL`` through
Scrapy's own downloader, and the storage records what came back.

A 2xx within ``PHAROX_CHECK_SLOW_MS`` is ACTIVE, a slower one SLOW, an error or any
other status INACTIVE. BANNED proxies are left alone (a check does not lift a ban),
and so are proxies whose protocol the download handler cannot speak.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess

from .bridge import Offloader
from .config import HealthCheckConfig
from .exceptions import PharoxError
from .models import Proxy, ProxyStatus, mask_url_password

if TYPE_CHECKING:
    from scrapy.crawler import Crawler, CrawlerRunnerBase
    from scrapy.http import Response
    from scrapy.settings import BaseSettings, Settings
    from twisted.python.failure import Failure

    from .storage import IStorage

T = TypeVar("T")

#: Statuses in the order summaries list them; "skipped" is a proxy not checked.
OUTCOMES = ("active", "slow", "inactive", "skipped")


@dataclass(frozen=True)
class CheckResult:
    """What one proxy did: the status recorded (None: skipped), latency, detail."""

    proxy: Proxy
    status: ProxyStatus | None
    latency_ms: float | None
    detail: str

    @property
    def outcome(self) -> str:
        """``active``, ``slow``, ``inactive`` or ``skipped``."""
        return self.status.value if self.status is not None else "skipped"


@dataclass
class CheckSummary:
    """A pool's check as it goes: how many proxies it covers and their results."""

    pool_name: str
    url: str
    total: int = 0
    results: list[CheckResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Proxies per outcome, every outcome present."""
        seen = Counter(result.outcome for result in self.results)
        return {outcome: seen[outcome] for outcome in OUTCOMES}


ResultCallback = Callable[[CheckResult, CheckSummary], None]

#: The check's requests carry their own proxy: no lease, no robots.txt fetched
#: directly, no cache, no throttling that would distort latencies.
_SPIDER_SETTINGS = {
    "PHAROX_ENABLED": False,
    "ROBOTSTXT_OBEY": False,
    "HTTPCACHE_ENABLED": False,
    "AUTOTHROTTLE_ENABLED": False,
    "DOWNLOAD_DELAY": 0,
    "COOKIES_ENABLED": False,
}


class PharoxCheckSpider(scrapy.Spider):
    """Requests ``PHAROX_CHECK_URL`` once through every proxy of a pool."""

    name = "pharox_check"

    def __init__(
        self,
        storage: IStorage,
        summary: CheckSummary,
        on_result: ResultCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage = storage
        self.summary = summary
        self.on_result = on_result
        self.check = HealthCheckConfig()
        self._offloader = Offloader(threads=4) if storage.blocking_io else None

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        super().update_settings(settings)
        concurrency = HealthCheckConfig.from_settings(settings).concurrency
        settings.setdict(
            {
                **_SPIDER_SETTINGS,
                "CONCURRENT_REQUESTS": concurrency,
                "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
            },
            priority="spider",
        )

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Any:
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.check = HealthCheckConfig.from_settings(crawler.settings)
        crawler.signals.connect(spider._shutdown, signal=signals.spider_closed)
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        proxies = await self._call(self.storage.list_proxies, self.summary.pool_name)
        self.summary.total = len(proxies)
        for proxy in proxies:
            if proxy.status is ProxyStatus.BANNED:
                self._report(CheckResult(proxy, None, None, "banned: not checked"))
            elif proxy.protocol not in self.check.protocols:
                self._report(
                    CheckResult(
                        proxy,
                        None,
                        None,
                        f"{proxy.protocol.value}: not in PHAROX_PROTOCOLS",
                    )
                )
            else:
                yield scrapy.Request(
                    self.summary.url,
                    callback=self._answered,
                    errback=self._failed,
                    cb_kwargs={"proxy": proxy},
                    dont_filter=True,
                    meta={
                        "proxy": proxy.url,
                        "dont_retry": True,
                        "download_timeout": self.check.timeout,
                        "handle_httpstatus_all": True,
                    },
                )

    async def _answered(self, response: Response, proxy: Proxy) -> None:
        latency_ms = round(float(response.meta["download_latency"]) * 1000, 1)
        if not 200 <= response.status < 300:
            status = ProxyStatus.INACTIVE
        elif latency_ms > self.check.slow_ms:
            status = ProxyStatus.SLOW
        else:
            status = ProxyStatus.ACTIVE
        await self._record(proxy, status, latency_ms, f"HTTP {response.status}")

    async def _failed(self, failure: Failure) -> None:
        request = getattr(failure, "request", None)
        if request is None:
            return
        proxy: Proxy = request.cb_kwargs["proxy"]
        error = failure.value
        detail = f"{type(error).__name__}: {error}".strip().rstrip(":")
        await self._record(proxy, ProxyStatus.INACTIVE, None, detail)

    async def _record(
        self,
        proxy: Proxy,
        status: ProxyStatus,
        latency_ms: float | None,
        detail: str,
    ) -> None:
        try:
            await self._call(
                self.storage.set_proxy_status,
                proxy.id,
                status,
                latency_ms=latency_ms,
                checked=True,
            )
        except PharoxError as exc:
            detail = f"{detail}; not recorded: {exc}"
        self._report(CheckResult(proxy, status, latency_ms, _hide_passwords(detail)))

    def _report(self, result: CheckResult) -> None:
        self.summary.results.append(result)
        if self.on_result is not None:
            self.on_result(result, self.summary)

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._offloader is None:
            return func(*args, **kwargs)
        return await self._offloader.run(partial(func, **kwargs), *args)

    def _shutdown(self) -> None:
        if self._offloader is not None:
            self._offloader.shutdown()


def _hide_passwords(detail: str) -> str:
    # Error texts quote what the network stack saw, which should never hold a
    # password; a check's output goes to terminals and logs, so make sure.
    return " ".join(mask_url_password(word) for word in detail.split(" "))


@dataclass(frozen=True)
class CheckRun:
    """A check scheduled on a crawler runner: its summary fills in until ``done``."""

    summary: CheckSummary
    done: Awaitable[Any]


def start_health_check(
    runner: CrawlerRunnerBase,
    storage: IStorage,
    pool_name: str,
    on_result: ResultCallback | None = None,
) -> CheckRun:
    """Schedule the check of a pool on ``runner`` (a CrawlerRunner or a process).

    PharoxSettingError at once when PHAROX_CHECK_URL is unset or a setting is bad.
    ``on_result`` is called on the reactor thread after each proxy.
    """
    check = HealthCheckConfig.from_settings(runner.settings)
    summary = CheckSummary(pool_name=pool_name, url=check.require_url())
    done = runner.crawl(
        PharoxCheckSpider, storage=storage, summary=summary, on_result=on_result
    )
    return CheckRun(summary, done)


def run_health_check(
    storage: IStorage,
    pool_name: str,
    settings: dict[str, Any] | Settings | None = None,
    on_result: ResultCallback | None = None,
) -> CheckSummary:
    """Check a pool in a crawler process of its own and return the summary.

    Blocks until done; like any crawler process, once per Python process.
    """
    process = CrawlerProcess(settings)
    run = start_health_check(process, storage, pool_name, on_result)
    process.start()
    return run.summary
