"""Pages per second of one crawl through five local proxies, per proxy layer.

    python benchmarks/bench_crawl.py [--pages 2000] [--rounds 5] [--database-url URL]

The site is static HTML served by nginx and the five forward proxies are tinyproxy
instances, all child processes of this script on 127.0.0.1, configured in a
temporary directory and stopped on exit. Without ``nginx`` and ``tinyproxy`` on
PATH, the pure-Python servers of ``scrapy_pharox/playground/`` stand in (slow
and noisy: the output says so). Each crawl runs in a fresh child process (one
Twisted reactor per crawl); the variants take turns round by round:

  trivial      a ten-line round-robin ``meta["proxy"]`` middleware (the baseline)
  pharox-mem   scrapy-pharox on the in-memory default, no per-proxy limit
  pharox-mem-4 scrapy-pharox on memory, at most 4 requests at once per proxy
  pharox-pg    scrapy-pharox on PostgreSQL (skipped when none answers)
  rotating     scrapy-rotating-proxies (skipped when not installed)
  trivial-import  only with --variants: the baseline in a process that imported
               scrapy-pharox and leased once, so pydantic and the models are in
               memory but no request sees them (what the import alone costs)

Per variant: the median pages/s over the rounds, its min-max, the ratio of medians
to the trivial baseline, the per-round (paired) ratios, the crawl process's CPU
time per page, and the CPU per page spent in the proxy layer itself (its
middleware methods, timed inside the crawl), with the ratio that cost alone
implies. Crawls wait for, and are run again after, other processes keeping the
machine busy. Every crawl must fetch every page, and a pharox crawl must end with
no lease out. See benchmarks/README.md for how to read the table.
"""

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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
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
VARIANTS = (*DEFAULT_VARIANTS, "trivial-import")
PHAROX_VARIANTS = frozenset({"pharox-mem", "pharox-mem-4", "pharox-pg"})
RESULT_PREFIX = "BENCH-RESULT "
CRAWL_TIMEOUT = 900.0
PR_SET_PDEATHSIG = 1


# -- the crawl (child process) -------------------------------------------------------


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


def variant_settings(
    name: str, proxy_urls: list[str], database_url: str, pool: str
) -> dict[str, Any]:
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
    if name == "trivial-import":
        lease_once_in_memory()
        return variant_settings("trivial", proxy_urls, database_url, pool)
    if name == "pharox-mem":
        return pharox
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
        "CONCURRENT_REQUESTS": CONCURRENCY,
        "CONCURRENT_REQUESTS_PER_DOMAIN": CONCURRENCY,
        **variant_settings(args.child, args.proxy, args.database_url, args.pool),
    }
    layer = LayerClock()
    layer.instrument([load_object(path) for path in settings["DOWNLOADER_MIDDLEWARES"]])
    if args.child == "pharox-pg":
        # Its SQL runs in rounds, in a task of the lease lane, not inside the
        # middleware's own steps: time that task's steps too.
        from scrapy_pharox.storage.sql_lane import _Pipeliner

        setattr(_Pipeliner, "_work", layer._timed(_Pipeliner._work))  # noqa: B010
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(AllPagesSpider)
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


# -- the servers (parent process) ----------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def page_html(title: str, links: list[str]) -> str:
    """The markup of the playground's pages (scrapy_pharox/playground/site.py)."""
    items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    )


def write_site(root: Path, pages: int) -> None:
    """/ links to every /page/<n>; each page to / and the next three (wrapping)."""
    (root / "page").mkdir(parents=True)
    index = page_html("Index", [f"/page/{n}" for n in range(1, pages + 1)])
    (root / "index.html").write_text(index, encoding="utf-8")
    for num in range(1, pages + 1):
        nxt = [(num + k - 1) % pages + 1 for k in (1, 2, 3)]
        links = ["/"] + [f"/page/{n}" for n in dict.fromkeys(nxt) if n != num]
        (root / "page" / str(num)).write_text(
            page_html(f"Page {num}", links), encoding="utf-8"
        )


def nginx_conf(tmp: Path, port: int) -> str:
    return f"""\
worker_processes 1;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type text/html;
    access_log {tmp}/nginx-access.log combined buffer=64k flush=1s;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/site;
        index index.html;
    }}
}}
"""


def tinyproxy_conf(tmp: Path, index: int, port: int) -> str:
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"""\
User {user}
Group {group}
Port {port}
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 60
MaxClients 256
LogFile "{tmp}/tinyproxy-{index}.log"
LogLevel Warning
Syslog Off
PidFile "{tmp}/tinyproxy-{index}.pid"
DisableViaHeader Yes
"""


def _server_preexec() -> None:
    """In a server child before exec: die with this script, even on SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Servers:
    """One site and PROXIES forward proxies on 127.0.0.1; a context manager."""

    pages: int
    cpus: set[int] | None = None
    description: str = ""
    site_url: str = ""
    proxy_urls: list[str] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def native(self) -> bool:
        return bool(shutil.which("nginx") and shutil.which("tinyproxy"))

    def __enter__(self) -> Servers:
        try:
            if self.native:
                self._start_native()
            else:
                self._start_playground()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def cpu_seconds(self) -> float:
        """CPU time the servers used so far (all of this process's, in fallback)."""
        if not self._processes:
            times = os.times()
            return times.user + times.system
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for process in self._processes:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")")[1]
                total += int(fields.split()[11]) + int(fields.split()[12])
        return total / tick

    def _start_native(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
        self._stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        self._stack.callback(self._stop_processes)
        write_site(tmp / "site", self.pages)
        site_port = free_port()
        (tmp / "nginx.conf").write_text(nginx_conf(tmp, site_port))
        nginx = shutil.which("nginx") or "nginx"
        self._spawn(
            "nginx",
            [nginx, "-p", f"{tmp}/", "-c", f"{tmp}/nginx.conf", "-e",
             f"{tmp}/nginx-error.log", "-g", "daemon off;"],
            site_port, tmp / "nginx-error.log",
        )  # fmt: skip
        self.site_url = f"http://127.0.0.1:{site_port}/"
        tinyproxy = shutil.which("tinyproxy") or "tinyproxy"
        for index in range(1, PROXIES + 1):
            port = free_port()
            conf = tmp / f"tinyproxy-{index}.conf"
            conf.write_text(tinyproxy_conf(tmp, index, port))
            log = tmp / f"tinyproxy-{index}.log"
            self._spawn("tinyproxy", [tinyproxy, "-d", "-c", str(conf)], port, log)
            self.proxy_urls.append(f"http://127.0.0.1:{port}")
        self.description = (
            f"nginx ({_version([nginx, '-v'])}) + {PROXIES} tinyproxy "
            f"({_version([tinyproxy, '-v'])}), child processes on 127.0.0.1"
        )

    def _spawn(self, name: str, command: list[str], port: int, log: Path) -> None:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches this script only: it stops them
            preexec_fn=_server_preexec,
        )
        self._processes.append(process)
        if self.cpus:
            os.sched_setaffinity(process.pid, self.cpus)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            time.sleep(0.02)
        stderr = (
            process.stderr.read().decode(errors="replace") if process.stderr else ""
        )
        if process.poll() is None:
            process.kill()
        logged = log.read_text(errors="replace") if log.exists() else ""
        tail = (stderr + logged).strip().splitlines()[-5:]
        raise RuntimeError(f"{name} did not start on port {port}: {tail}")

    def _stop_processes(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 5
        for process in self._processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()

    def _start_playground(self) -> None:
        from scrapy_pharox.playground import ForwardProxy, TargetSite

        if self.cpus:  # the servers are threads of this process
            os.sched_setaffinity(0, self.cpus)
        site = self._stack.enter_context(TargetSite(pages=self.pages))
        self.site_url = site.url + "/"
        for _ in range(PROXIES):
            proxy = self._stack.enter_context(ForwardProxy())
            self.proxy_urls.append(proxy.url)
        self.description = (
            "FALLBACK: scrapy_pharox/playground/ threads in this process "
            "(nginx and/or tinyproxy not on PATH: slow and noisy, ratios unreliable)"
        )


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stderr or done.stdout).strip().splitlines()
    return text[0].rsplit(" ", 1)[-1].rsplit("/", 1)[-1] if text else "?"


# -- measuring -----------------------------------------------------------------------


@dataclass
class Crawl:
    """One crawl's figures, as the child printed them, and what ran beside it."""

    round_no: int
    figures: dict[str, Any]
    server_cpu_seconds: float
    #: CPU seconds the PostgreSQL server used meanwhile (whoever asked)
    postgres_seconds: float
    #: CPU cores other processes kept busy meanwhile (PostgreSQL included, except
    #: for pharox-pg, which keeps it busy itself)
    others: float
    disturbed: bool = False

    @property
    def pages(self) -> int:
        return int(self.figures["responses"])

    @property
    def rate(self) -> float:
        seconds = self.figures["seconds"]
        return self.pages / seconds if seconds else 0.0

    @property
    def cpu_per_page(self) -> float:
        """Microseconds of the crawl process's CPU time per page."""
        return self.figures["cpu_seconds"] / max(1, self.pages) * 1e6

    @property
    def layer_per_page(self) -> float:
        """Microseconds of CPU per page in the proxy layer: its middleware methods
        on the reactor thread, plus every other thread (pharox's storage threads).
        """
        layer = self.figures["layer_seconds"] + self.figures["thread_seconds"]
        return layer / max(1, self.pages) * 1e6

    @property
    def cpu_share(self) -> float:
        seconds = self.figures["seconds"]
        return self.figures["cpu_seconds"] / seconds if seconds else 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used since boot (Linux), else 0."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_seconds() -> float:
    """CPU seconds of the machine's PostgreSQL processes (Linux): the live ones,
    plus the exited backends their postmaster reaped. 0 when there is none."""
    found: dict[int, tuple[int, int, int]] = {}  # pid: (ppid, own, reaped) ticks
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(" (")[2].rpartition(") ")
            if name == "postgres":
                fields = [int(value) for value in rest.split()[1:15]]
                found[int(entry.name)] = (
                    fields[0],
                    fields[10] + fields[11],
                    fields[12] + fields[13],
                )
    ticks = sum(
        own + (reaped if ppid not in found else 0)
        for ppid, own, reaped in found.values()
    )
    return ticks / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its children waited for so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(
    name: str, servers: Servers, args: argparse.Namespace, crawl_cpus: set[int] | None
) -> Crawl | str:
    """Run one crawl in a fresh child process: its figures, or why it failed."""
    pool = f"bench-crawl-{os.getpid()}-{time.time_ns()}"  # a pool per crawl
    command = [
        sys.executable, __file__, "--child", name, "--start-url", servers.site_url,
        "--database-url", args.database_url, "--pool", pool,
        "--parent-pid", str(os.getpid()),
        *[arg for url in servers.proxy_urls for arg in ("--proxy", url)],
    ]  # fmt: skip
    if crawl_cpus:
        command += ["--cpus", ",".join(map(str, sorted(crawl_cpus)))]
    if args.profile_dir and name in PHAROX_VARIANTS:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = args.profile_dir / f"{name}-{args.round_no + 1}.prof"
        command += ["--profile", str(profile)]
    before = (
        time.perf_counter(), machine_busy_seconds(), own_seconds(),
        servers.cpu_seconds(), postgres_seconds(),
    )  # fmt: skip
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=CRAWL_TIMEOUT,
            start_new_session=True,  # Ctrl-C reaches this script, which kills it
        )
    except subprocess.TimeoutExpired:
        return f"no result within {CRAWL_TIMEOUT:.0f}s"
    wall, busy, own, server, postgres = (
        now - then
        for now, then in zip(
            (time.perf_counter(), machine_busy_seconds(), own_seconds(),
             servers.cpu_seconds(), postgres_seconds()),
            before,
            strict=True,
        )
    )  # fmt: skip
    # In the fallback the servers are threads of this process: counted in ``own``.
    ours = own + (server if servers.native else 0.0)
    if name == "pharox-pg":  # the server works for this crawl: not "others"
        ours += postgres
    others = max(0.0, busy - ours) / wall
    lines = [
        line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)
    ]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"exit {done.returncode}: {tail[0]}"
    figures = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return Crawl(args.round_no, figures, server, postgres, others)


def others_busy(seconds: float) -> float:
    """CPU cores that processes other than this one keep busy, sampled over
    ``seconds`` (between crawls, when the servers are idle)."""
    before = machine_busy_seconds() - own_seconds()
    time.sleep(seconds)
    return max(0.0, machine_busy_seconds() - own_seconds() - before) / seconds


def wait_until_quiet(limit: float, patience: float) -> bool:
    """Wait up to ``patience`` seconds for other processes to use at most ``limit``
    CPU cores (sampled every second); True when they did."""
    deadline = time.monotonic() + patience
    while True:
        if others_busy(1.0) <= limit:
            return True
        if time.monotonic() >= deadline:
            return False


def measure_quietly(
    name: str, servers: Servers, args: argparse.Namespace, crawl_cpus: set[int] | None
) -> Crawl | str:
    """``measure``, once the machine is quiet, again if others disturbed it."""
    outcome: Crawl | str = "not run"
    for _ in range(args.retries + 1):
        if name == "pharox-pg":
            args.vacuum_note = vacuum_pharox_tables(args.database_url)
        wait_until_quiet(args.max_others, args.quiet_wait)
        outcome = measure(name, servers, args, crawl_cpus)
        if isinstance(outcome, str) or outcome.others <= args.max_others:
            return outcome
        outcome.disturbed = True
    return outcome


def problems(name: str, crawl: Crawl, pages: int) -> list[str]:
    """What went wrong in a crawl that ended: missing pages, errors, leaked leases."""
    figures, expected = crawl.figures, pages + 1  # the index and every page
    found = []
    if figures["responses"] != expected or figures["status_200"] != expected:
        found.append(
            f"{figures['status_200']}/{expected} pages with status 200 "
            f"({figures['responses']} responses)"
        )
    if figures["download_errors"]:
        found.append(f"{figures['download_errors']} download errors")
    if figures["log_errors"]:
        found.append(f"{figures['log_errors']} errors logged")
    if name in PHAROX_VARIANTS:
        if figures["leased"] is None:
            found.append("no pharox stats")
        elif figures["active_leases"] or figures["leased"] != figures["released"]:
            found.append(
                f"leases leaked: {figures['active_leases']} active, "
                f"{figures['leased']} leased, {figures['released']} released"
            )
    return found


def postgres_answers(database_url: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            database_url, connect_args={"connect_timeout": 3}
        )
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return reason[0][:100] if reason else type(exc).__name__
    return None


def vacuum_pharox_tables(database_url: str) -> str:
    """VACUUM the pharox tables, so that every pharox-pg crawl starts alike.

    Each lease leaves a dead row behind; where autovacuum is off (as on some test
    servers) they pile up from crawl to crawl and every acquire gets slower. A
    plain VACUUM takes no lock that stops readers or writers. Returns a note.
    """
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            database_url,
            connect_args={"connect_timeout": 3},
            isolation_level="AUTOCOMMIT",
        )
        try:
            with engine.connect() as conn:
                autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
                tables = conn.execute(
                    sqlalchemy.text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = "
                        "current_schema() AND tablename LIKE :pattern"
                    ),
                    {"pattern": "pharox\\_%"},
                ).scalars()
                for table in list(tables):
                    conn.exec_driver_sql(f'VACUUM "{table}"')
        finally:
            engine.dispose()
    except Exception as exc:
        return f"could not vacuum: {str(exc).strip().splitlines()[0][:80]}"
    return f"pharox tables vacuumed before each crawl (autovacuum {autovacuum})"


def cpu_split(pin: str) -> tuple[set[int] | None, set[int] | None, str]:
    """(crawl CPUs, server CPUs, how) for --pin."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None, "off (no sched_setaffinity here)"
    if pin == "off":
        return None, None, f"off (all on CPUs {_cpus(set(cpus))})"
    if len(cpus) < 2:
        return None, None, "off (a single CPU)"
    crawl, server = {cpus[0]}, set(cpus[1:])
    return crawl, server, f"crawl on CPU {_cpus(crawl)}, servers on CPU {_cpus(server)}"


def _cpus(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _paired_ratios(crawls: list[Crawl], base_by_round: dict[int, float]) -> list[float]:
    """Each crawl's pages/s over that of the trivial crawl of its own round."""
    return [
        crawl.rate / base_by_round[crawl.round_no]
        for crawl in crawls
        if crawl.round_no in base_by_round
    ]


def _mean_and_error(values: list[float]) -> str:
    error = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.3f} +- {error:.3f}"


def _paired(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the servers are stopped on the way out


# -- report --------------------------------------------------------------------------


def report(
    variants: list[str], results: dict[str, list[Crawl]], notes: dict[str, list[str]]
) -> None:
    base = results.get("trivial", [])
    base_rate = statistics.median(c.rate for c in base) if base else 0.0
    base_cpu = statistics.median(c.cpu_per_page for c in base) if base else 0.0
    base_by_round = {b.round_no: b.rate for b in base}
    base_layer = statistics.median(c.layer_per_page for c in base) if base else 0.0
    header = (
        f"{'variant':<13}{'pages/s':>8}{'min-max':>10}{'spread':>7}{'vs trivial':>11}"
        f"{'paired':>17}{'cpu us/pg':>10}{'cpu%':>5}{'layer us/pg':>12}"
        f"{'layer est':>10}{'others':>7}  notes"
    )
    print(header)
    print("-" * len(header))
    for name in variants:
        crawls = results.get(name, [])
        extra = []
        if disturbed := sum(c.disturbed for c in crawls):
            extra.append(f"{disturbed}/{len(crawls)} crawls disturbed")
        per_page = [c.figures["thread_seconds"] / max(1, c.pages) for c in crawls]
        threads = statistics.median(per_page) * 1e6 if per_page else 0.0
        if threads >= 50:
            extra.append(f"of which other threads {threads:.0f} us/pg")
        if name == "pharox-pg" and crawls:
            postgres = statistics.median(
                c.postgres_seconds / max(1, c.pages) * 1e6 for c in crawls
            )
            extra.append(f"PostgreSQL (all clients) {postgres:.0f} CPU us/pg")
        note = "; ".join(dict.fromkeys([*notes.get(name, []), *extra]))
        if not crawls:
            print(f"{name:<13}{'-':>8}{'':>28}{'-':>11}{'':>61}  {note}")
            continue
        rates = [c.rate for c in crawls]
        rate = statistics.median(rates)
        cpu = statistics.median(c.cpu_per_page for c in crawls)
        layer = statistics.median(c.layer_per_page for c in crawls)
        # the ratio to expect if the crawl is CPU-bound and only the layer differs
        estimate = base_cpu / (base_cpu - base_layer + layer) if base_cpu else 0.0
        paired = _paired_ratios(crawls, base_by_round)
        cells = [
            f"{name:<13}{rate:>8.0f}",
            f"{f'{min(rates):.0f}-{max(rates):.0f}':>10}",
            f"{(max(rates) - min(rates)) / rate:>7.0%}",
            f"{f'{rate / base_rate:.2f}x' if base_rate else '-':>11}",
            f"{_paired(paired) if name != 'trivial' else '':>17}",
            f"{cpu:>10.0f}",
            f"{statistics.median(c.cpu_share for c in crawls):>5.0%}",
            f"{layer:>12.0f}",
            f"{f'{estimate:.3f}x' if estimate else '-':>10}",
            f"{statistics.median(c.others for c in crawls):>7.2f}",
            f"  {note}",
        ]
        print("".join(cells).rstrip())
    crawls = [c for runs in results.values() for c in runs if c.pages]
    if not crawls:
        return
    server_us = statistics.median(c.server_cpu_seconds / c.pages * 1e6 for c in crawls)
    print(
        "pages/s: median over the rounds, min-max, spread = (max-min)/median; vs "
        "trivial: ratio of the medians;\npaired: median (min-max) of the ratios to "
        "the trivial crawl of the same round; cpu us/pg: CPU time of the\ncrawl "
        "process per page; cpu%: its CPU time / wall time; layer us/pg: CPU per page "
        "inside the proxy\nlayer's middleware methods (reactor thread) plus in other "
        "threads (pharox's storage threads);\nlayer est: trivial's CPU per page / "
        "(that - trivial's layer + this layer), the ratio a CPU-bound crawl\nwould "
        "show; others: CPU cores other processes kept busy (PostgreSQL too, but for "
        f"pharox-pg).\nMedians over the rounds. Servers: {server_us:.0f} CPU us/page."
    )
    means = [
        f"{name} {_mean_and_error(ratios)}"
        for name in variants
        if name != "trivial"
        and len(ratios := _paired_ratios(results.get(name, []), base_by_round)) > 1
    ]
    if means:
        print("Paired ratios, mean +- standard error: " + ", ".join(means) + ".")
    disturbed = sum(c.disturbed for c in crawls)
    if disturbed:
        print(
            f"WARNING: {disturbed} of {len(crawls)} crawls ran while other processes "
            "were busy (others above --max-others, even after retries): trust the "
            "paired and cpu columns more than pages/s, or rerun on a quiet machine."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (trivial always runs)",
    )
    parser.add_argument(
        "--pin",
        choices=("on", "off"),
        default="off",
        help="crawl on the first CPU, servers on the others (default: off, it did "
        "not lower the spread on a 2-CPU machine; see benchmarks/README.md)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="a crawl during which other processes kept more CPU cores than this "
        "busy is run again (default: 0.25)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="how often a disturbed crawl is run again (default: 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait, before each crawl, for the other processes to calm "
        "down below --max-others (default: 20)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="run the pharox crawls under cProfile and write .prof files here",
    )
    # internal: the child process
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start-url", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--pool", default="bench-crawl", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    variants = ["trivial"] + [
        name
        for name in dict.fromkeys(args.variants.split(","))
        if name and name != "trivial"
    ]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    notes: dict[str, list[str]] = {}
    if "pharox-pg" in variants:
        why = postgres_answers(args.database_url)
        if why is not None:
            notes["pharox-pg"] = [f"skipped: PostgreSQL does not answer ({why})"]
    if "rotating" in variants and importlib.util.find_spec("rotating_proxies") is None:
        notes["rotating"] = ["skipped: scrapy-rotating-proxies not installed"]
    runnable = [name for name in variants if name not in notes]
    crawl_cpus, server_cpus, pinning = cpu_split(args.pin)
    results: dict[str, list[Crawl]] = {}
    with Servers(args.pages, cpus=server_cpus) as servers:
        print(
            f"{args.pages} pages (+ the index), {PROXIES} proxies, {CONCURRENCY} "
            f"concurrent requests, {args.rounds} rounds, variants in turn"
        )
        print(f"servers: {servers.description}")
        print(f"pinning: {pinning}; load average at the start: {_load()}", flush=True)
        for round_no in range(args.rounds):
            args.round_no = round_no
            shift = round_no % len(runnable)  # who goes first changes every round
            order = runnable[shift:] + runnable[:shift]
            line = []
            for name in order:
                outcome = measure_quietly(name, servers, args, crawl_cpus)
                if isinstance(outcome, str):
                    notes.setdefault(name, []).append(f"failed: {outcome}")
                    line.append(f"{name} failed")
                    continue
                notes.setdefault(name, []).extend(problems(name, outcome, args.pages))
                results.setdefault(name, []).append(outcome)
                line.append(
                    f"{name} {outcome.rate:.0f}" + ("(disturbed)" * outcome.disturbed)
                )
            print(f"round {round_no + 1}: " + ", ".join(line), flush=True)
    if getattr(args, "vacuum_note", None):
        notes.setdefault("pharox-pg", []).append(args.vacuum_note)
    print(f"load average at the end: {_load()}")
    print()
    report(variants, results, notes)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers are already stopped
        print("interrupted", file=sys.stderr)
        sys.exit(130)
