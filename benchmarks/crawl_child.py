"""One crawl in a child process: the variants, the spider, the layer's CPU clock."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.util
import inspect
import itertools
import json
import os
import signal
import time
import types
import zlib
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response
from scrapy.utils.misc import load_object

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROXIES = 5
CONCURRENCY = 16
DEFAULT_VARIANTS = ("trivial", "pharox-mem", "pharox-mem-4", "pharox-pg", "rotating")
VARIANTS = (
    *DEFAULT_VARIANTS,
    "trivial-import",
    "pharox-mem-sessions",
    "pharox-mem-bare",
)
PHAROX_VARIANTS = frozenset(name for name in VARIANTS if name.startswith("pharox"))
#: Sessions of the ``pharox-mem-sessions`` crawl: every page is in one of them.
SESSION_KEYS = 32
RESULT_PREFIX = "BENCH-RESULT "
CRAWL_TIMEOUT = 900.0
PR_SET_PDEATHSIG = 1


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


class SessionPagesSpider(AllPagesSpider):
    """Every page in one of SESSION_KEYS sessions, by its URL."""

    def pharox_session_key(self, request: scrapy.Request) -> str:
        return f"s{zlib.crc32(request.url.encode()) % SESSION_KEYS}"


def variant_settings(
    name: str,
    proxy_urls: list[str],
    database_url: str,
    pool: str,
    proxy_max_concurrency: int = 0,
) -> dict[str, Any]:
    """The variant's settings; ``proxy_max_concurrency`` is the per-proxy limit of
    the pharox variants but ``pharox-mem-4`` (0: none)."""
    pharox: dict[str, Any] = {
        "DOWNLOADER_MIDDLEWARES": {"scrapy_pharox.PharoxProxyMiddleware": 740},
        "EXTENSIONS": {"scrapy_pharox.PharoxStatsExtension": 500},
        "PHAROX_PROXIES": proxy_urls,
        "PHAROX_PROXY_MAX_CONCURRENCY": proxy_max_concurrency,
    }
    if importlib.util.find_spec("scrapy_pharox.session_middlewares") is not None:
        # What the add-on enables (a commit before sessions has none of these).
        pharox["DOWNLOADER_MIDDLEWARES"][
            "scrapy_pharox.PharoxSessionCookiesMiddleware"
        ] = 690
        pharox["SPIDER_MIDDLEWARES"] = {
            "scrapy_pharox.PharoxSessionSpiderMiddleware": 500
        }
    if name == "trivial":
        return {
            "DOWNLOADER_MIDDLEWARES": {f"{__name__}.TrivialRoundRobin": 740},
            "BENCH_PROXIES": proxy_urls,
        }
    if name == "trivial-import":
        lease_once_in_memory()
        return variant_settings("trivial", proxy_urls, database_url, pool)
    if name in ("pharox-mem", "pharox-mem-sessions"):
        return pharox
    if name == "pharox-mem-bare":  # without the session middlewares
        return {
            **pharox,
            "DOWNLOADER_MIDDLEWARES": {"scrapy_pharox.PharoxProxyMiddleware": 740},
            "SPIDER_MIDDLEWARES": {},
        }
    if name == "pharox-mem-4":
        return {**pharox, "PHAROX_PROXY_MAX_CONCURRENCY": 4}
    if name == "pharox-pg":
        return {**pharox, "PHAROX_STORAGE_URL": database_url, "PHAROX_POOL": pool}
    if name == "rotating":
        return {
            "DOWNLOADER_MIDDLEWARES": {
                "rotating_proxies.middlewares.RotatingProxyMiddleware": 610,
                "rotating_proxies.middlewares.BanDetectionMiddleware": 620,
            },
            "ROTATING_PROXY_LIST": [url.removeprefix("http://") for url in proxy_urls],
        }
    raise SystemExit(f"unknown variant {name!r}")


def lease_once_in_memory() -> None:
    """Import scrapy-pharox and lease one proxy from an in-memory pool, so that
    pydantic, the models and their schemas are loaded as in a pharox crawl."""
    from scrapy_pharox import ProxyManager
    from scrapy_pharox.models import Proxy, ProxyPool
    from scrapy_pharox.storage import open_storage

    manager = ProxyManager(open_storage("memory://"))
    pool = manager.storage.add_pool(ProxyPool(name="import-only"))
    proxy = Proxy.from_url("http://127.0.0.1:9", pool_id=pool.id)
    manager.storage.add_proxy(proxy)
    lease = manager.acquire_proxy(pool.name)
    assert lease is not None
    manager.release_proxy(lease)


class LayerClock:
    """CPU time of this thread spent inside the proxy layer's middleware methods.

    Each ``process_request`` / ``process_response`` / ``process_exception`` of
    the variant's middleware classes is wrapped; a coroutine method is timed
    step by step, so the time it spends suspended (waiting for a storage thread,
    say) is not counted: only the code it runs on the reactor thread.
    """

    METHODS = ("process_request", "process_response", "process_exception")

    def __init__(self) -> None:
        self.seconds = 0.0

    def instrument(self, classes: list[type]) -> None:
        for cls in classes:
            for name in self.METHODS:
                method = cls.__dict__.get(name)
                if method is not None:
                    setattr(cls, name, self._timed(method))

    def _timed(self, method: Any) -> Any:
        clock = self

        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
                return await clock._steps(method(*args, **kwargs))

            return timed_coroutine

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                clock.seconds += time.thread_time() - started

        return timed

    @types.coroutine
    def _steps(self, coroutine: Any) -> Any:
        """Drive ``coroutine``, timing each step it runs on this thread."""
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.thread_time()
            try:
                if error is None:
                    yielded = coroutine.send(value)
                else:
                    yielded = coroutine.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                self.seconds += time.thread_time() - started
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the event loop: pass on
                value, error = None, exc


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel stop this process when its parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid and os.getppid() != parent_pid:  # it died before prctl
        os._exit(1)


def run_child(args: argparse.Namespace) -> None:
    """Crawl once; print one line: RESULT_PREFIX + JSON figures."""
    die_with_parent(args.parent_pid)
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    settings = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.concurrency,
        **variant_settings(
            args.child,
            args.proxy,
            args.database_url,
            args.pool,
            args.proxy_max_concurrency,
        ),
    }
    layer = LayerClock()
    if not args.no_layer_clock:  # the marginal mode reads no layer figure
        layer.instrument(
            [load_object(path) for path in settings["DOWNLOADER_MIDDLEWARES"]]
        )
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(
        SessionPagesSpider if args.child == "pharox-mem-sessions" else AllPagesSpider
    )
    clock: dict[str, float] = {}

    def readings() -> tuple[float, float, float, float]:
        return (
            time.perf_counter(), time.process_time(), time.thread_time(),
            layer.seconds,
        )  # fmt: skip

    def opened() -> None:
        clock["wall"], clock["cpu"], clock["main"], clock["layer"] = readings()

    def closed() -> None:
        wall, cpu, main, in_layer = readings()
        clock["wall"], clock["cpu"] = wall - clock["wall"], cpu - clock["cpu"]
        clock["threads"] = clock["cpu"] - (main - clock["main"])
        clock["layer"] = in_layer - clock["layer"]

    crawler.signals.connect(opened, signal=signals.spider_opened)
    crawler.signals.connect(closed, signal=signals.spider_closed)
    process.crawl(crawler, start_url=args.start_url)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    process.start()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    figures = {
        "seconds": clock.get("wall", 0.0),
        "cpu_seconds": clock.get("cpu", 0.0),
        # CPU of the reactor thread inside the proxy layer, and of other threads
        "layer_seconds": clock.get("layer", 0.0),
        "thread_seconds": clock.get("threads", 0.0),
        "responses": stats.get("response_received_count", 0),
        "status_200": stats.get("downloader/response_status_count/200", 0),
        "download_errors": stats.get("downloader/exception_count", 0),
        "log_errors": stats.get("log_count/ERROR", 0),
        "leased": stats.get("pharox/acquire/leased"),
        "active_leases": stats.get("pharox/leases/active"),
        "released": sum(
            stats.get(f"pharox/release/{reason}", 0)
            for reason in ("response", "exception", "closed")
        ),
    }
    print(RESULT_PREFIX + json.dumps(figures), flush=True)
