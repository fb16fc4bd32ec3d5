"""A login flow in sessions, on the offline playground: each user logs in and
walks the pages behind the login through one proxy, with one cookie jar.

    python example_spider/run_sessions.py [--users 3] [--proxies 4] [--no-sessions]
        [--storage-url URL]

Starts, on 127.0.0.1, a site whose ``/flow/<n>`` pages give each new visitor a
cookie and refuse it (403) when it comes back through another proxy than the
one it was issued to, and ``--proxies`` forward proxies; then crawls: each user
posts the login form (``/flow/1``) in session ``user``, and the follow-ups name
no session, so they stay in it. Halfway, the proxy of the first user starts
refusing it, as a site that bans an IP would: that session moves to another
proxy with an empty jar (the site gives it a new cookie; a site that asks for
the login again is met with ``pharox_session_check``). Prints what the site saw.
With ``--storage-url`` (a SQLite file, PostgreSQL) the sessions stay there
after the crawl, for ``scrapy pharox-sessions`` to show. ``--no-sessions`` runs
the same crawl with a proxy per request and Scrapy's one
cookie jar, for comparison. Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

from scrapy_pharox.playground import ForwardProxy, TargetSite


class LoginSpider(scrapy.Spider):
    name = "login"

    def __init__(
        self, site: TargetSite, users: list[str], sessions: bool, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.site, self.users, self.sessions = site, users, sessions
        self.pages: dict[str, list[tuple[int, int]]] = defaultdict(list)

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for user in self.users:
            yield self.login(user)

    def login(self, user: str) -> scrapy.Request:
        return scrapy.FormRequest(
            f"{self.site.url}/flow/1",
            formdata={"user": user, "password": f"{user}-password"},
            meta={"pharox_session": user} if self.sessions else {"user": user},
            dont_filter=True,
        )

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        user = response.meta.get("pharox_session") or response.meta["user"]
        page = int(response.url.rsplit("/", 1)[1])
        proxy = response.meta["pharox_lease"].proxy
        self.pages[user].append((page, proxy.port))
        if user == self.users[0] and page == 3 and len(self.pages[user]) == 3:
            self.site.banned_proxy_ports.add(proxy.port)  # the site bans that IP
        # Follow-ups name no session: they stay in this one.
        for link in response.css("a::attr(href)").getall():
            meta = {} if self.sessions else {"user": user}
            yield response.follow(link, meta=meta, dont_filter=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--proxies", type=int, default=4)
    parser.add_argument("--no-sessions", dest="sessions", action="store_false")
    parser.add_argument("--storage-url", default="memory://")
    args = parser.parse_args()
    users = ["ann", "bob", "eve", "kim", "lou", "max"][: args.users]
    site = TargetSite(pages=1).start()
    proxies = [ForwardProxy().start() for _ in range(args.proxies)]
    try:
        process = CrawlerProcess(
            {
                "ADDONS": {"scrapy_pharox.Addon": 300},
                "PHAROX_PROXIES": [proxy.url for proxy in proxies],
                "PHAROX_STORAGE_URL": args.storage_url,
                "PHAROX_STATS_INTERVAL": 0,
                "TELNETCONSOLE_ENABLED": False,
                "LOG_LEVEL": "WARNING",
                "PHAROX_ACQUIRE_TIMEOUT": 5,
            }
        )
        crawler = process.create_crawler(LoginSpider)
        started = time.monotonic()
        process.crawl(crawler, site=site, users=users, sessions=args.sessions)
        process.start()
        took = time.monotonic() - started
        assert crawler.spider is not None and crawler.stats is not None
        report(crawler.spider, site, len(proxies), took, crawler.stats.get_stats())
        return 0 if not site.refused or not args.sessions else 1
    finally:
        for proxy in proxies:
            proxy.stop()
        site.stop()


def report(
    spider: Any, site: TargetSite, proxies: int, took: float, stats: dict[str, Any]
) -> None:
    pages = sum(len(walked) for walked in spider.pages.values())
    print(
        f"{len(spider.users)} users on {proxies} proxies, {pages} pages in "
        f"{took:.1f} s; visitors the site saw: {len(site.visitors)}, "
        f"cookies it refused: {len(site.refused)}"
    )
    for user in spider.users:
        walked = " ".join(f"{page}@:{port}" for page, port in spider.pages[user])
        print(f"  {user}: {walked}")
    for key in sorted(stats):
        if key.startswith(("pharox/session/", "pharox/ban/", "pharox/leases/active")):
            print(f"  {key} = {stats[key]}")


if __name__ == "__main__":
    raise SystemExit(main())
