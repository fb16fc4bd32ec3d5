"""What the session crawl tests share: a spider that walks ``/flow/<n>`` pages
of a TargetSite in sessions, and records what each response came through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response

from scrapy_pharox.playground.site import VISITOR_COOKIE


class FlowSpider(scrapy.Spider):
    """Walks ``/flow/<first>`` to ``/flow/<last>`` once per session key; the
    follow-ups name no session (they stay in their parent's)."""

    name = "flows"

    def __init__(
        self,
        base_url: str,
        keys: list[str],
        first: int = 1,
        last: int = 6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.base_url, self.keys = base_url, keys
        self.first, self.last = int(first), int(last)
        self.seen: list[dict[str, Any]] = []

    async def start(self) -> AsyncIterator[Any]:
        for key in self.keys:
            yield scrapy.Request(
                f"{self.base_url}/flow/{self.first}",
                meta={"pharox_session": key},
                dont_filter=True,
            )

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.seen.append(seen(response))
        if page_of(response.url) < self.last:
            for href in response.css("a::attr(href)").getall():
                yield response.follow(href, dont_filter=True)


def seen(response: Response) -> dict[str, Any]:
    """What a test checks of one response: its session, page, status, the
    proxy port it came through and the visitor cookie its request carried."""
    lease = response.meta.get("pharox_lease")
    return {
        "key": response.meta.get("pharox_session"),
        "page": page_of(response.url),
        "status": response.status,
        "port": lease.proxy.port if lease is not None else None,
        "cookie": visitor_of(response.request.headers.get("Cookie")),
    }


def page_of(url: str) -> int:
    """The number of a ``/flow/<n>`` page."""
    return int(urlsplit(url).path.rsplit("/", 1)[1])


def visitor_of(header: bytes | None) -> str | None:
    """The visitor cookie in a Cookie header, if any."""
    if not header:
        return None
    morsel = SimpleCookie(header.decode("latin-1")).get(VISITOR_COOKIE)
    return morsel.value if morsel is not None else None


def pages_of(seen: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The responses of session ``key``, by page."""
    return sorted(
        (page for page in seen if page["key"] == key), key=lambda p: p["page"]
    )
