"""A provider gateway as sticky exits, on the offline playground.

    python example_spider/run_gateway.py [--identities 4] [--burn-after 10]

Starts, on 127.0.0.1, a site of 120 slow pages and a gateway that picks its exit
by the session id in the proxy user name (``cust-42-session-<id>``), blocks an
exit after ``--burn-after`` requests (403) and ends a session 2 seconds after
its first request; then crawls through ``PHAROX_GATEWAYS`` with one request per
exit at a time. Prints the renewals logged and, per exit (session id), how many
requests it carried, how many at once at most and for how long. Nothing leaves
this machine.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

from scrapy_pharox.playground import GatewayProxy, TargetSite


class PagesSpider(scrapy.Spider):
    name = "pages"

    def __init__(self, start_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_url = start_url

    async def start(self) -> Any:
        yield scrapy.Request(self.start_url)

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        yield from response.follow_all(css="a")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=4)
    parser.add_argument("--burn-after", type=int, default=10)
    args = parser.parse_args()
    gateway = GatewayProxy(
        username_template="cust-42-session-{session}",
        password="not-for-logs",
        burn_after=args.burn_after,
        session_seconds=2.0,
    ).start()
    with TargetSite(pages=120, delay=0.1) as site:
        process = CrawlerProcess(
            {
                "ADDONS": {"scrapy_pharox.Addon": 300},
                "LOG_LEVEL": "INFO",
                "LOG_FORMAT": "%(levelname)s: %(message)s",
                "TELNETCONSOLE_ENABLED": False,
                "PHAROX_STATS_INTERVAL": 0,
                # The playground burns every exit after the same count, so a
                # retried request may meet several exits burning at once.
                "RETRY_TIMES": 5,
                "PHAROX_GATEWAYS": [
                    {
                        # The playground's gateway: {session} in the user name.
                        "url": gateway.gateway_url,
                        "identities": args.identities,
                        "session_seconds": 2.0,  # the provider's sticky time
                        "max_concurrency": 1,  # one request per exit at a time
                        "country": "DE",
                    }
                ],
            }
        )
        for name in ("scrapy", "scrapy_pharox.extension"):
            logging.getLogger(name).setLevel(logging.WARNING)
        crawler = process.create_crawler(PagesSpider)
        process.crawl(crawler, start_url=f"{site.url}/")
        process.start()
        exits = sorted(gateway.exits.items(), key=lambda item: item[1].first_seen)
        for session_id, stats in exits:
            print(
                f"exit {session_id}: {stats.requests:2d} requests, at most "
                f"{stats.max_in_flight} at once, over "
                f"{stats.last_seen - stats.first_seen:3.1f} s"
                + (", burned" if stats.burned else "")
            )
        stats = crawler.stats.get_stats()  # type: ignore[union-attr]
        pages = stats.get("downloader/response_status_count/200", 0)
        print(
            f"  pages fetched: {pages}; 403s met: {gateway.burned_requests}; "
            f"sessions expired under a request: {gateway.expired_requests}"
        )
        for key in sorted(k for k in stats if k.startswith("pharox/identity/")):
            print(f"  {key} = {stats[key]}")
    gateway.stop()


if __name__ == "__main__":
    main()
