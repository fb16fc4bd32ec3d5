"""A polite fleet on the offline playground: crawls that share one pool and keep
one reuse delay per proxy and host between them.

    python example_spider/run_polite_fleet.py [--crawls 2] [--pages 15]
        [--reuse-delay 0.5] [--storage-url URL]

Starts, on 127.0.0.1, a site of linked pages (reached as 127.0.0.1 and as
localhost: two hosts) and four forward proxies (the example spider leases its
pages from the three European ones), then runs ``--crawls``
``scrapy crawl pages`` processes at once on one storage (a SQLite file in a
temporary directory unless ``--storage-url`` names one, such as PostgreSQL) with
``PHAROX_REUSE_DELAY``. Prints, from what the site recorded, how close two
requests of one proxy to one host came, and each crawl's paced acquires.
Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from scrapy_pharox.playground import ForwardProxy, TargetSite

HERE = Path(__file__).resolve().parent
COUNTRIES = ("DE", "DE", "NL", "US")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crawls", type=int, default=2)
    parser.add_argument("--pages", type=int, default=15)
    parser.add_argument("--reuse-delay", type=float, default=0.5)
    parser.add_argument("--storage-url")
    args = parser.parse_args()
    site = TargetSite(pages=args.pages).start()
    proxies = [ForwardProxy().start() for _ in COUNTRIES]
    try:
        with tempfile.TemporaryDirectory() as workdir:
            storage_url = args.storage_url or f"sqlite:///{workdir}/fleet.db"
            proxies_file = Path(workdir) / "proxies.txt"
            proxies_file.write_text(
                "".join(
                    f"{proxy.url} country={country}\n"
                    for proxy, country in zip(proxies, COUNTRIES, strict=True)
                ),
                encoding="utf-8",
            )
            other_host = site.url.replace("127.0.0.1", "localhost")
            command = [
                sys.executable, "-m", "scrapy", "crawl", "pages",
                "-s", f"START_URLS={site.url}/,{other_host}/",
                "-s", f"PHAROX_STORAGE_URL={storage_url}",
                "-s", f"PHAROX_PROXIES_FILE={proxies_file}",
                "-s", f"PHAROX_REUSE_DELAY={args.reuse_delay}",
                "-s", "LOG_LEVEL=INFO",
            ]  # fmt: skip
            started = time.monotonic()
            crawls = [
                subprocess.Popen(command, cwd=HERE, stderr=subprocess.PIPE, text=True)
                for _ in range(args.crawls)
            ]
            logs = [crawl.communicate()[1] for crawl in crawls]
            took = time.monotonic() - started
        report(site, proxies, logs, took, args.reuse_delay)
        return max(crawl.returncode for crawl in crawls)
    finally:
        for proxy in proxies:
            proxy.stop()
        site.stop()


def report(
    site: TargetSite,
    proxies: list[ForwardProxy],
    logs: list[str],
    took: float,
    reuse_delay: float,
) -> None:
    arrivals: dict[tuple[int | None, str], list[float]] = defaultdict(list)
    for request in site.requests:
        arrivals[(request.via_proxy_port, request.host)].append(request.at)
    print(
        f"\n{len(logs)} crawls, {len(site.requests)} requests in {took:.1f} s, "
        f"PHAROX_REUSE_DELAY = {reuse_delay} s"
    )
    for proxy in proxies:
        for host in ("127.0.0.1", "localhost"):
            times = sorted(arrivals.get((proxy.port, host), []))
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            closest = f"{min(gaps):.2f} s" if gaps else "-"
            print(
                f"  proxy :{proxy.port} -> {host:9}: {len(times):2} requests, "
                f"closest two {closest} apart"
            )
    for number, log in enumerate(logs, start=1):
        paced = re.search(r"'pharox/acquire/paced': (\d+)", log)
        pages = re.search(r"'response_received_count': (\d+)", log)
        print(
            f"  crawl {number}: {pages.group(1) if pages else '?'} responses, "
            f"{paced.group(1) if paced else '?'} paced acquires"
        )


if __name__ == "__main__":
    sys.exit(main())
