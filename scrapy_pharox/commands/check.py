"""``scrapy pharox-check --pool NAME``: fetch PHAROX_CHECK_URL through every proxy
of a pool and record ACTIVE, SLOW or INACTIVE."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from ..config import HealthCheckConfig
from ..health import OUTCOMES, CheckResult, CheckSummary, start_health_check
from ..models import mask_url_password
from ._common import (
    CommandError,
    PharoxCommand,
    address_order,
    milliseconds,
    proxies,
    require_pool,
    table,
)

if TYPE_CHECKING:
    import argparse


class ProgressBar:
    """``checking [######......] 3/6`` on one line of a stream, drawn again in place."""

    width = 30

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.drawn = False

    def draw(self, done: int, total: int) -> None:
        """Show ``done`` of ``total``."""
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def on_result(self, result: CheckResult, summary: CheckSummary) -> None:
        """A ``start_health_check`` callback."""
        self.draw(len(summary.results), summary.total)

    def finish(self) -> None:
        """End the bar's line."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class Command(PharoxCommand):
    name = "pharox-check"
    requires_crawler_process = True
    default_settings: ClassVar[dict[str, Any]] = {"LOG_LEVEL": "WARNING"}

    def syntax(self) -> str:
        return "--pool NAME [--storage URL] [-s PHAROX_CHECK_URL=URL]"

    def short_desc(self) -> str:
        return "Health-check the proxies of a scrapy-pharox pool"

    def long_desc(self) -> str:
        return (
            "Fetch PHAROX_CHECK_URL through every proxy of the pool with Scrapy's "
            "downloader, PHAROX_CHECK_CONCURRENCY at a time, and record each "
            "proxy's status: active, slow (over PHAROX_CHECK_SLOW_MS) or inactive "
            "(an error, no answer within PHAROX_CHECK_TIMEOUT, or a status other "
            "than 2xx). Banned proxies are not checked."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--pool", metavar="NAME", required=True, help="the pool")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None and self.crawler_process is not None
        with self.failures():
            HealthCheckConfig.from_settings(self.settings).require_url()
            with self.storage(opts) as storage:
                stats = require_pool(storage, opts.pool)
                bar = ProgressBar(sys.stderr, f"checking {opts.pool}")
                bar.draw(0, stats.total_proxies)
                started = time.monotonic()
                run = start_health_check(
                    self.crawler_process, storage, opts.pool, bar.on_result
                )
                self.crawler_process.start()
                bar.finish()
            if self.crawler_process.bootstrap_failed:
                raise CommandError("the check could not start: see the log above")
            print(report(run.summary, time.monotonic() - started))


def report(summary: CheckSummary, seconds: float) -> str:
    """The summary line and a row per proxy."""
    counts = summary.counts
    parts = ", ".join(f"{counts[outcome]} {outcome}" for outcome in OUTCOMES)
    head = (
        f"Checked {proxies(summary.total)} of pool {summary.pool_name!r} through "
        f"{mask_url_password(summary.url)} in {seconds:.1f} s: {parts}"
    )
    if not summary.results:
        return head
    rows = [
        (
            result.proxy.masked_url,
            result.outcome,
            milliseconds(result.latency_ms),
            result.detail,
        )
        for result in sorted(
            summary.results, key=lambda result: address_order(result.proxy)
        )
    ]
    return head + "\n" + table(("proxy", "result", "latency", "detail"), rows, (2,))
