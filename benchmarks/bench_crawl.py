"""Pages per second of one crawl through five local proxies, per proxy layer.

    python benchmarks/bench_crawl.py [--pages 2000] [--database-url URL]

One local site and five local forward proxies run in this process; each variant
crawls every page in a fresh child process (one Twisted reactor per crawl):

  trivial      a ten-line round-robin ``meta["proxy"]`` middleware (the baseline)
  pharox-mem   scrapy-pharox on the in-memory default, no per-proxy limit
  pharox-mem-4 scrapy-pharox on memory, at most 4 requests at once per proxy
  pharox-pg    scrapy-pharox on PostgreSQL (skipped when none answers)
  rotating     scrapy-rotating-proxies (skipped when not installed)

Ratios are against the trivial middleware measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "example_spider"))

from playground import ForwardProxy, TargetSite

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROXIES = 5


class TrivialRoundRobin:
    """The baseline: each request gets the next proxy URL, nothing else."""

    def __init__(self, proxy_urls: list[str]) -> None:
        self._cycle = itertools.cycle(proxy_urls)

    @classmethod
    def from_crawler(cls, crawler: Any) -> TrivialRoundRobin:
        return cls(crawler.settings.getlist("BENCH_PROXIES"))

    def process_request(self, request: scrapy.Request) -> None:
        request.meta.setdefault("proxy", next(self._cycle))


class AllPagesSpider(scrapy.Spider):
    name = "bench"

    def __init__(self, start_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_url = start_url

    async def start(self) -> Any:
        yield scrapy.Request(self.start_url)

    def parse(self, response: Response) -> Any:
        yield from response.follow_all(css="a", callback=self.parse)


def variant_settings(name: str, proxy_urls: list[str], database_url: str) -> dict:
    pharox = {
        "DOWNLOADER_MIDDLEWARES": {"scrapy_pharox.PharoxProxyMiddleware": 740},
        "EXTENSIONS": {"scrapy_pharox.PharoxStatsExtension": 500},
        "PHAROX_PROXIES": proxy_urls,
        "PHAROX_PROXY_MAX_CONCURRENCY": 0,
    }
    if name == "trivial":
        return {
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.TrivialRoundRobin": 740},
            "BENCH_PROXIES": proxy_urls,
        }
    if name == "pharox-mem":
        return pharox
    if name == "pharox-mem-4":
        return {**pharox, "PHAROX_PROXY_MAX_CONCURRENCY": 4}
    if name == "pharox-pg":
        return {
            **pharox,
            "PHAROX_STORAGE_URL": database_url,
            "PHAROX_POOL": f"bench-{os.getpid()}-{time.time_ns()}",
        }
    if name == "rotating":
        return {
            "DOWNLOADER_MIDDLEWARES": {
                "rotating_proxies.middlewares.RotatingProxyMiddleware": 610,
                "rotating_proxies.middlewares.BanDetectionMiddleware": 620,
            },
            "ROTATING_PROXY_LIST": [url.removeprefix("http://") for url in proxy_urls],
        }
    raise SystemExit(f"unknown variant {name!r}")


def run_child(name: str, start_url: str, proxy_urls: list[str], db_url: str) -> None:
    """Crawl once, print one JSON line with the figures."""
    settings = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
        **variant_settings(name, proxy_urls, db_url),
    }
    process = CrawlerProcess(settings, install_root_handler=False)
    crawler = process.create_crawler(AllPagesSpider)
    process.crawl(crawler, start_url=start_url)
    started = time.perf_counter()
    process.start()
    elapsed = time.perf_counter() - started
    stats = crawler.stats.get_stats()
    pages = stats.get("response_received_count", 0)
    print(
        json.dumps(
            {
                "pages": pages,
                "seconds": elapsed,
                "leaked": stats.get("pharox/leases/active", 0),
            }
        )
    )


def measure(name: str, site: TargetSite, proxies: list[ForwardProxy], db_url: str):
    command = [
        sys.executable, __file__, "--child", name, "--start-url", site.url + "/",
        "--database-url", db_url, *[arg for p in proxies for arg in ("--proxy", p.url)],
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None, done.stderr.strip().splitlines()[-1:] or ["no output"]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def postgres_answers(database_url: str) -> bool:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(database_url)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--child")
    parser.add_argument("--start-url")
    parser.add_argument("--proxy", action="append", default=[])
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.start_url, args.proxy, args.database_url)
        return

    variants = ["trivial", "pharox-mem", "pharox-mem-4", "pharox-pg", "rotating"]
    with TargetSite(pages=args.pages) as site:
        proxies = [ForwardProxy().start() for _ in range(PROXIES)]
        try:
            best: dict[str, float] = {}
            notes: dict[str, str] = {}
            for _ in range(args.rounds):
                for name in variants:
                    if name == "pharox-pg" and not postgres_answers(args.database_url):
                        notes[name] = "skipped: PostgreSQL does not answer"
                        continue
                    if name == "rotating":
                        try:
                            import rotating_proxies  # noqa: F401
                        except ImportError:
                            notes[name] = "skipped: scrapy-rotating-proxies missing"
                            continue
                    result, error = measure(name, site, proxies, args.database_url)
                    if result is None:
                        notes[name] = f"failed: {error}"
                        continue
                    rate = result["pages"] / result["seconds"]
                    if result["pages"] < args.pages:
                        notes[name] = f"only {result['pages']} pages"
                    if result["leaked"]:
                        notes[name] = f"{result['leaked']} leases leaked"
                    best[name] = max(best.get(name, 0.0), rate)
        finally:
            for proxy in proxies:
                proxy.stop()
    baseline = best.get("trivial")
    print(
        f"{args.pages} pages, {PROXIES} local proxies, 16 concurrent requests, "
        f"best of {args.rounds} rounds"
    )
    print(f"{'variant':<14}{'pages/s':>10}{'vs trivial':>12}")
    for name in variants:
        if name in best:
            ratio = f"{best[name] / baseline:.2f}x" if baseline else "-"
            print(f"{name:<14}{best[name]:>10.0f}{ratio:>12}  {notes.get(name, '')}")
        else:
            print(f"{name:<14}{'-':>10}{'-':>12}  {notes.get(name, '')}")


if __name__ == "__main__":
    main()
