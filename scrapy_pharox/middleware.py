"""The downloader middleware: a leased proxy on each request, given back after."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import IgnoreRequest

from .keeper import LeaseKeeper
from .models import Lease, LeaseOutcome
from .stopping import HandBack, StopWaiting

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self

#: The proxy address this middleware put in ``meta["proxy"]``: how a copied
#: request (retry, redirect, follow with the old meta) is told from one whose
#: proxy someone else chose.
OUR_PROXY_KEY = "_pharox_proxy"


class PharoxProxyMiddleware:
    """Leases a proxy for every request and releases it on response or error.

    Put it at 740: before HttpProxyMiddleware (750) turns the proxy's credentials
    into a Proxy-Authorization header, and releasing before RedirectMiddleware
    (600) and RetryMiddleware (550) build a new request, which gets a new lease.
    """

    def __init__(self, keeper: LeaseKeeper, crawler: Crawler) -> None:
        self.keeper = keeper
        self.crawler = crawler
        self.hand_back = HandBack(crawler, keeper.stop_waiting)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        middleware = cls(LeaseKeeper.for_crawler(crawler), crawler)
        crawler.signals.connect(middleware.spider_opened, signal=signals.spider_opened)
        return middleware

    def spider_opened(self) -> None:
        assert self.crawler.engine is not None
        self.hand_back.watch(self.crawler.engine)

    async def process_request(self, request: Request) -> Request | None:
        meta = request.meta
        if "proxy" in meta and not self._set_by_us(request):
            return None
        stale = meta.pop("pharox_lease", None)
        if isinstance(stale, Lease) and self.keeper.holds(stale):
            # A middleware after us answered the old request with a new one, so our
            # process_response never saw its response: give that lease back now.
            await self.keeper.release(stale, "response")
        meta.pop("proxy", None)
        try:
            lease = await self.keeper.lease_for(request)
        except StopWaiting:
            return self.hand_back.request_for(request)
        assert lease.proxy is not None
        proxy = lease.proxy
        url = proxy.url
        meta["pharox_lease"] = lease
        meta["proxy"] = url
        # Without credentials the URL is the address: build the string once.
        meta[OUR_PROXY_KEY] = url if proxy.credentials is None else proxy.address
        return None

    async def process_response(
        self, request: Request, response: Response
    ) -> Response | Request:
        lease = request.meta.get("pharox_lease")
        if not isinstance(lease, Lease) or not self.keeper.holds(lease):
            return response
        banned = self._is_ban(response)
        latency = request.meta.get("download_latency")
        report = self.keeper.report(
            request,
            LeaseOutcome.BAN if banned else LeaseOutcome.SUCCESS,
            latency * 1000 if isinstance(latency, (int, float)) else None,
        )
        await self.keeper.release(lease, "response", report)
        if not banned:
            return response
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(f"pharox/ban/status/{response.status}")
        if request.meta.get("dont_retry"):
            return response
        # Through Scrapy's retry machinery: retry/* stats and max_retry_times apply.
        assert self.crawler.spider is not None
        retry = get_retry_request(
            request, spider=self.crawler.spider, reason="pharox_ban"
        )
        return retry if retry is not None else response

    async def process_exception(self, request: Request, exception: Exception) -> None:
        lease = request.meta.get("pharox_lease")
        if not isinstance(lease, Lease):
            return
        if isinstance(exception, IgnoreRequest):
            # A later middleware dropped the request: no verdict on the proxy.
            await self.keeper.release(lease, "closed")
        else:
            report = self.keeper.report(request, LeaseOutcome.FAILURE)
            await self.keeper.release(lease, "exception", report)

    def _is_ban(self, response: Response) -> bool:
        is_ban = getattr(self.crawler.spider, "pharox_is_ban", None)
        if callable(is_ban):
            return bool(is_ban(response))
        return response.status in self.keeper.config.ban_status_codes

    @staticmethod
    def _set_by_us(request: Request) -> bool:
        ours = request.meta.get(OUR_PROXY_KEY)
        lease = request.meta.get("pharox_lease")
        if ours is None or not isinstance(lease, Lease) or lease.proxy is None:
            return False
        return request.meta["proxy"] in (ours, lease.proxy.url)
