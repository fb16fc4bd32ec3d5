"""One session crawl process: walks ``/flow/<first>`` to ``/flow/<last>`` in
session KEY through a shared storage.

    python tests/session_worker.py BASE_URL STORAGE_URL KEY FIRST LAST PROXY_URL...

Prints one JSON line when its first response comes (``{"first": ...}``), then,
unless killed, one with what it saw and its pharox stats. ``SESSION_SETTINGS``
(JSON) adds Scrapy settings; ``SESSION_HANG=1`` makes it wait on ``/slow`` in
its session after the first page, so a test can kill it mid-flow.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crawl_support import BASE_SETTINGS
from session_support import FlowSpider, seen


class WorkerSpider(FlowSpider):
    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        if not self.seen:
            print(json.dumps({"first": seen(response)}), flush=True)
        if os.environ.get("SESSION_HANG"):
            self.seen.append(seen(response))
            yield response.follow("/slow", dont_filter=True)
            return
        yield from super().parse(response)


def main() -> None:
    base_url, storage_url, key, first, last, *proxy_urls = sys.argv[1:]
    process = CrawlerProcess(
        {
            **BASE_SETTINGS,
            "LOG_LEVEL": "WARNING",
            "PHAROX_STORAGE_URL": storage_url,
            "PHAROX_PROXIES": proxy_urls,
            **json.loads(os.environ.get("SESSION_SETTINGS", "{}")),
        }
    )
    crawler = process.create_crawler(WorkerSpider)
    process.crawl(
        crawler, base_url=base_url, keys=[key], first=int(first), last=int(last)
    )
    process.start()
    assert crawler.stats is not None and crawler.spider is not None
    stats = {
        name: value
        for name, value in crawler.stats.get_stats().items()
        if name.startswith("pharox/")
    }
    print(json.dumps({"seen": crawler.spider.seen, "stats": stats}), flush=True)


if __name__ == "__main__":
    main()
