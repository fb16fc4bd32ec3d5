"""CPU cost of the middleware alone: process_request + process_response per request.

    python benchmarks/bench_layer.py [--requests 4000] [--repeat 15]
    python benchmarks/bench_layer.py --storage-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Builds PharoxProxyMiddleware from a test crawler (5 proxies, no per-proxy limit,
as in bench_crawl.py), then puts each request through ``process_request`` and
its response through ``process_response``, one request after another, on an
asyncio loop. Requests and responses are built before the clocks start. Prints
the CPU time of this process per request (the best and the median of
``--repeat`` runs), and the wall time, which on PostgreSQL includes a round trip
per statement: one request at a time shares no round with another.

Timings on a virtual machine move by 10-20% from run to run. Instruction counts
do not: run it under callgrind with ``--repeat 1``, once as is and once with
``--without-middleware`` (the same requests and responses are built, nothing is
called), and divide the difference of the totals by ``--requests``:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/bench_layer.py --repeat 1 [--without-middleware]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from scrapy import Request
from scrapy.http import HtmlResponse
from scrapy.utils.test import get_crawler

from scrapy_pharox import PharoxProxyMiddleware

PROXIES = 5


def build_middleware(storage_url: str) -> PharoxProxyMiddleware:
    crawler = get_crawler(
        settings_dict={
            "PHAROX_PROXIES": [f"http://127.0.0.1:{9000 + n}" for n in range(PROXIES)],
            "PHAROX_PROXY_MAX_CONCURRENCY": 0,
            "PHAROX_STORAGE_URL": storage_url,
            "PHAROX_POOL": "bench-layer",
        }
    )
    return PharoxProxyMiddleware.from_crawler(crawler)


def traffic(count: int) -> list[tuple[Request, HtmlResponse]]:
    pairs = []
    for number in range(count):
        request = Request(f"http://127.0.0.1:8000/page/{number}")
        request.meta["download_latency"] = 0.003
        pairs.append((request, HtmlResponse(request.url, body=b"", request=request)))
    return pairs


async def one_run(
    middleware: PharoxProxyMiddleware, count: int, *, call: bool = True
) -> tuple[float, float]:
    """CPU and wall seconds for ``count`` requests, each leased and given back
    (with ``call`` false the requests are built, and nothing more)."""
    pairs = traffic(count)
    cpu, wall = time.process_time(), time.perf_counter()
    for request, response in pairs if call else []:
        await middleware.process_request(request)
        await middleware.process_response(request, response)
    await asyncio.gather(*middleware.keeper._giving_back)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--storage-url", default="memory://")
    parser.add_argument(
        "--without-middleware",
        action="store_true",
        help="build the requests and responses only: the baseline of an "
        "instruction count",
    )
    args = parser.parse_args()
    middleware = build_middleware(args.storage_url)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(one_run(middleware, 200))  # warm up: caches, pool
        runs = [
            loop.run_until_complete(
                one_run(middleware, args.requests, call=not args.without_middleware)
            )
            for _ in range(args.repeat)
        ]
    finally:
        loop.close()
        middleware.keeper.shutdown()
    if args.requests and not args.without_middleware:
        cpu = [run[0] / args.requests * 1e6 for run in runs]
        wall = [run[1] / args.requests * 1e6 for run in runs]
        print(
            f"{args.storage_url}: CPU {min(cpu):.1f} us per request (best), "
            f"{statistics.median(cpu):.1f} (median of {args.repeat}); "
            f"wall {statistics.median(wall):.1f} us (median)"
        )


if __name__ == "__main__":
    main()
