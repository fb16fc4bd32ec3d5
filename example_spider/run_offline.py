"""Crawl the offline playground: a local site behind four local proxies.

    python example_spider/run_offline.py [--pages 60] [extra scrapy crawl args]

Starts, on 127.0.0.1, a site of linked pages and four forward proxies (one of them
asking for a password), writes them to a proxies file with their countries, then
runs ``scrapy crawl pages`` in this project against them on the in-memory pool and
prints what each proxy served. Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from scrapy_pharox.playground import ForwardProxy, TargetSite

HERE = Path(__file__).resolve().parent
COUNTRIES = ("DE", "DE", "NL", "US")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=60)
    args, scrapy_args = parser.parse_known_args()
    site = TargetSite(pages=args.pages, delay=0.05).start()
    proxies = [ForwardProxy().start() for _ in COUNTRIES[:-1]]
    proxies.append(ForwardProxy(username="demo", password="s3cr3t!").start())
    try:
        with tempfile.TemporaryDirectory() as workdir:
            proxies_file = Path(workdir) / "proxies.txt"
            proxies_file.write_text(
                "# written by run_offline.py: URL, then fields\n"
                + "".join(
                    f"{proxy.auth_url} country={country}\n"
                    for proxy, country in zip(proxies, COUNTRIES, strict=True)
                ),
                encoding="utf-8",
            )
            command = [
                sys.executable, "-m", "scrapy", "crawl", "pages",
                "-s", f"START_URLS={site.url}/",
                "-s", f"PHAROX_PROXIES_FILE={proxies_file}",
                "-s", "PHAROX_STATS_INTERVAL=1",
                "-o", str(Path(workdir) / "pages.jsonl"),
                *scrapy_args,
            ]  # fmt: skip
            status = subprocess.call(command, cwd=HERE)
            items = (Path(workdir) / "pages.jsonl").read_text().splitlines()
        print(f"\n{len(items)} pages scraped from {site.url}")
        for proxy, country in zip(proxies, COUNTRIES, strict=True):
            count = proxy.requests_count
            print(
                f"  proxy {proxy.url} ({country}): {count} "
                f"request{'' if count == 1 else 's'}, "
                f"at most {proxy.max_active_requests} at once"
            )
        return status
    finally:
        for proxy in proxies:
            proxy.stop()
        site.stop()


if __name__ == "__main__":
    sys.exit(main())
