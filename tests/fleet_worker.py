"""One crawl process of the fleet test: crawls a site through a shared pool.

    python tests/fleet_worker.py START_URL STORAGE_URL PROXY_URL...

Prints the crawl's pharox stats as one JSON line. Settings in the environment
variable FLEET_SETTINGS (a JSON object) are added to its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from scrapy.crawler import CrawlerProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crawl_support import BASE_SETTINGS, LinkSpider


def main() -> None:
    start_url, storage_url, *proxy_urls = sys.argv[1:]
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
    crawler = process.create_crawler(LinkSpider)
    process.crawl(crawler, start_url=start_url)
    process.start()
    assert crawler.stats is not None
    stats = {
        key: value
        for key, value in crawler.stats.get_stats().items()
        if key.startswith("pharox/") or key == "response_received_count"
    }
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
