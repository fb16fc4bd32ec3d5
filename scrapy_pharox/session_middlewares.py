"""What puts requests into sessions before the downloader middleware leases.

``PharoxSessionSpiderMiddleware`` keeps follow-ups in their session: a request
yielded from a session response's callback gets its key unless it names its
own (``None``: no session). ``PharoxSessionCookiesMiddleware`` runs before
Scrapy's CookiesMiddleware (700): it asks the spider's ``pharox_session_key``
for requests that name no session, and turns Scrapy's shared jar off for session
requests, whose cookies the session's own jar holds (``sessions``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy import Request

from .exceptions import InvalidArgumentError
from .models.sessions import session_key_problem
from .session_state import OUR_COOKIES_KEY, SESSION_META_KEY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self


class PharoxSessionSpiderMiddleware:
    """Follow-ups of a session's response stay in its session."""

    def process_spider_output(
        self, response: Response, result: Iterable[Any], spider: Spider | None = None
    ) -> Iterator[Any]:
        key = response.meta.get(SESSION_META_KEY) if response.request else None
        for item in result:
            if key is not None and isinstance(item, Request):
                item.meta.setdefault(SESSION_META_KEY, key)
            yield item

    async def process_spider_output_async(
        self,
        response: Response,
        result: AsyncIterator[Any],
        spider: Spider | None = None,
    ) -> AsyncIterator[Any]:
        key = response.meta.get(SESSION_META_KEY) if response.request else None
        async for item in result:
            if key is not None and isinstance(item, Request):
                item.meta.setdefault(SESSION_META_KEY, key)
            yield item


class PharoxSessionCookiesMiddleware:
    """Names the session of a request (the spider's ``pharox_session_key``
    when the request names none) and keeps Scrapy's shared cookie jar off it."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._key_of: Any = None  # the spider's pharox_session_key, looked up once

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Request | None:
        meta = request.meta
        if SESSION_META_KEY in meta:
            key = meta[SESSION_META_KEY]
        else:
            key_of = self._key_of
            if key_of is None:
                key_of = getattr(self.crawler.spider, "pharox_session_key", None)
                self._key_of = key_of = key_of if callable(key_of) else False
            if key_of is False:
                return None
            key = key_of(request)
            meta[SESSION_META_KEY] = key
        if key is None:
            return None
        problem = session_key_problem(key)
        if problem is not None:
            raise InvalidArgumentError(f"{problem}, got {key!r} for {request}")
        if not meta.get("dont_merge_cookies"):
            meta["dont_merge_cookies"] = meta[OUR_COOKIES_KEY] = True
        return None
