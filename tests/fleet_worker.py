"""One crawl process of the fleet tests: crawls a site through a shared pool.

    python tests/fleet_worker.py START_URL STORAGE_URL PROXY_URL...

Prints the crawl's pharox stats, and the times (epoch seconds) its responses
came, as one JSON line. ``FLEET_SETTINGS`` (JSON) adds Scrapy settings;
``FLEET_RECHECK_SECONDS`` sets how often a waiting request looks again on its
own (``keeper.FIRST_RECHECK_SECONDS`` and ``MAX_RECHECK_SECONDS``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crawl_support import BASE_SETTINGS, LinkSpider
from scrapy_pharox import keeper


class TimedSpider(LinkSpider):
    """LinkSpider that notes when each response came."""

    times: list[float]

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.times.append(time.time())
        yield from super().parse(response)


def main() -> None:
    start_url, storage_url, *proxy_urls = sys.argv[1:]
    if "FLEET_RECHECK_SECONDS" in os.environ:
        seconds = float(os.environ["FLEET_RECHECK_SECONDS"])
        keeper.FIRST_RECHECK_SECONDS = keeper.MAX_RECHECK_SECONDS = seconds
    process = CrawlerProcess(
        {
            **BASE_SETTINGS,
            "LOG_LEVEL": "WARNING",
            "PHAROX_STORAGE_URL": storage_url,
            "PHAROX_PROXIES": proxy_urls,
            "CONCURRENT_REQUESTS": 8,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
            **json.loads(os.environ.get("FLEET_SETTINGS", "{}")),
        }
    )
    crawler = process.create_crawler(TimedSpider)
    TimedSpider.times = []
    process.crawl(crawler, start_url=start_url)
    process.start()
    assert crawler.stats is not None
    stats = {
        key: value
        for key, value in crawler.stats.get_stats().items()
        if key.startswith("pharox/") or key == "response_received_count"
    }
    seen = crawler.spider.seen  # type: ignore[union-attr]
    print(json.dumps({**stats, "times": TimedSpider.times, "seen": seen}, default=str))


if __name__ == "__main__":
    main()
