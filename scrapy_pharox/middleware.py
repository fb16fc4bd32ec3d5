"""The downloader middleware: a leased proxy on each request, given back after."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest

from .keeper import LeaseKeeper
from .models import Lease

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

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(LeaseKeeper.for_crawler(crawler))

    async def process_request(self, request: Request) -> None:
        meta = request.meta
        if "proxy" in meta and not self._set_by_us(request):
            return
        stale = meta.pop("pharox_lease", None)
        if isinstance(stale, Lease) and self.keeper.holds(stale):
            # A middleware after us answered the old request with a new one, so our
            # process_response never saw its response: give that lease back now.
            await self.keeper.release(stale, "response")
        meta.pop("proxy", None)
        lease = await self.keeper.lease_for(request)
        assert lease.proxy is not None
        meta["pharox_lease"] = lease
        meta["proxy"] = lease.proxy.url
        meta[OUR_PROXY_KEY] = lease.proxy.address

    async def process_response(self, request: Request, response: Response) -> Response:
        await self._release(request, "response")
        return response

    async def process_exception(self, request: Request, exception: Exception) -> None:
        # IgnoreRequest from a later middleware drops the request: "closed".
        reason = "closed" if isinstance(exception, IgnoreRequest) else "exception"
        await self._release(request, reason)

    async def _release(self, request: Request, reason: str) -> None:
        lease = request.meta.get("pharox_lease")
        if isinstance(lease, Lease):
            await self.keeper.release(lease, reason)

    @staticmethod
    def _set_by_us(request: Request) -> bool:
        ours = request.meta.get(OUR_PROXY_KEY)
        lease = request.meta.get("pharox_lease")
        if ours is None or not isinstance(lease, Lease) or lease.proxy is None:
            return False
        return request.meta["proxy"] in (ours, lease.proxy.url)
