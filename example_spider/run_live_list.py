"""A pool that follows a live proxy list, on the offline playground.

    python example_spider/run_live_list.py [--refresh 1]

Starts, on 127.0.0.1, a site of 60 slow pages whose ``/proxies.txt`` is the
list (two proxies, and a line with a typo), and four forward proxies; then
crawls with only ``PHAROX_PROXIES_URL`` set, so the pool starts empty. After 20
pages the list names the two other proxies instead. Prints the log lines of
the list and, per proxy, when (seconds into the crawl) it carried its first
and last request. Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

from scrapy_pharox.playground import ForwardProxy, TargetSite


class PagesSpider(scrapy.Spider):
    name = "pages"

    def __init__(self, site: TargetSite, later: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site, self.later, self.seen = site, later, 0

    async def start(self) -> Any:
        yield scrapy.Request(f"{self.site.url}/")

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        self.seen += 1
        if self.seen == 20:
            self.site.proxy_list = self.later
        yield from response.follow_all(css="a")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--refresh", type=float, default=1.0)
    args = parser.parse_args()
    proxies = [ForwardProxy().start() for _ in range(4)]
    with TargetSite(pages=60, delay=0.1) as site:
        site.proxy_list = (
            f"# provider list\n{proxies[0].url} country=DE\n{proxies[1].url}\n"
            "http://bob:hunter2@127.0.0.1   # a typo: no port\n"
        )
        later = "".join(f"{proxy.url}\n" for proxy in proxies[2:])
        process = CrawlerProcess(
            {
                "ADDONS": {"scrapy_pharox.Addon": 300},
                "LOG_LEVEL": "INFO",
                "LOG_FORMAT": "%(levelname)s: %(message)s",
                "TELNETCONSOLE_ENABLED": False,
                "PHAROX_PROXIES_URL": f"{site.url}/proxies.txt",
                "PHAROX_PROXIES_REFRESH": args.refresh,
                "PHAROX_STATS_INTERVAL": 0,
            }
        )
        for name in ("scrapy", "scrapy_pharox.extension"):
            logging.getLogger(name).setLevel(logging.WARNING)
        started = time.monotonic()
        crawler = process.create_crawler(PagesSpider)
        process.crawl(crawler, site=site, later=later)
        process.start()
        for proxy in proxies:
            times = [
                r.at - started for r in site.requests if r.via_proxy_port == proxy.port
            ]
            span = f"{min(times):4.1f} s to {max(times):4.1f} s" if times else "-"
            print(f"proxy :{proxy.port}: {len(times):2d} requests, {span}")
        stats = crawler.stats.get_stats()  # type: ignore[union-attr]
        for key in sorted(k for k in stats if k.startswith("pharox/source/")):
            print(f"  {key} = {stats[key]}")
        print(f"  list fetched {len(site.list_fetches)} times")
    for proxy in proxies:
        proxy.stop()


if __name__ == "__main__":
    main()
