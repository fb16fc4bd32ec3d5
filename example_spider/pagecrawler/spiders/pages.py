"""Crawls a site through leased proxies, from European proxies only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response


class PagesSpider(scrapy.Spider):
    """Follows every link of the start site; one item a page, naming its proxy."""

    name = "pages"
    # Per-spider pool filters: every request of this spider goes through a German
    # or Dutch proxy, unless a request's meta says otherwise.
    pharox_filters: ClassVar[dict[str, Any]] = {
        "any_of": [{"country": "DE"}, {"country": "NL"}]
    }

    async def start(self) -> AsyncIterator[Any]:
        for url in self.settings.getlist("START_URLS"):
            yield scrapy.Request(url)
            # One request that must leave from the United States: a per-request
            # override of the spider's filters.
            yield scrapy.Request(
                url,
                meta={"pharox_filters": {"country": "US"}},
                dont_filter=True,
                cb_kwargs={"note": "via the US"},
            )

    def parse(self, response: Response, note: str = "") -> Iterator[Any]:
        lease = response.meta["pharox_lease"]
        yield {
            "url": response.url,
            "title": response.css("title::text").get(),
            "proxy": lease.proxy.masked_url,
            "country": lease.proxy.country,
            "note": note,
        }
        site = urlsplit(response.url).netloc
        for link in response.css("a::attr(href)").getall():
            url = response.urljoin(link)
            if urlsplit(url).netloc == site:
                yield scrapy.Request(url, callback=self.parse)
