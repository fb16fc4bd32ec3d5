"""What the pharox-* commands share: the storage they open, one-line failures,
and plain-text tables."""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.commands import ScrapyCommand

from ..config import CommandConfig
from ..exceptions import PharoxError
from ..models import PoolStatsSnapshot, Proxy, utc_now
from ..storage import IStorage, open_storage

if TYPE_CHECKING:
    import argparse


class CommandError(Exception):
    """A reason the command cannot go on, told to the user in one line."""


class PharoxCommand(ScrapyCommand):
    """A command over the storage of ``--storage URL`` or ``PHAROX_STORAGE_URL``."""

    requires_project = False
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}
    #: How the user calls it, shown in its error lines.
    name: ClassVar[str]

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--storage",
            metavar="URL",
            help="the storage: sqlite:///path.db or postgresql+psycopg://... "
            "(default: the PHAROX_STORAGE_URL setting)",
        )

    @property
    def config(self) -> CommandConfig:
        """The settings the commands read, checked."""
        assert self.settings is not None
        return CommandConfig.from_settings(self.settings)

    @contextmanager
    def failures(self) -> Iterator[None]:
        """Turn a PharoxError or CommandError into one line on stderr, exit code 1."""
        try:
            yield
        except (CommandError, PharoxError) as exc:
            message = " ".join(str(exc).split())
            print(f"scrapy {self.name}: error: {message}", file=sys.stderr)
            self.exitcode = 1

    @contextmanager
    def storage(self, opts: argparse.Namespace) -> Iterator[IStorage]:
        """The storage to work on, closed on the way out."""
        url = opts.storage or self.config.storage_url
        if url.partition("://")[0].lower() == "memory":
            raise CommandError(
                "memory:// lives and dies with one process: give --storage or "
                "PHAROX_STORAGE_URL a database (sqlite:///path.db, "
                "postgresql+psycopg://user:password@host:5432/db)"
            )
        storage = open_storage(url)
        try:
            yield storage
        finally:
            storage.close()


def require_pool(storage: IStorage, pool_name: str) -> PoolStatsSnapshot:
    """The pool's counts; CommandError naming the pools there are when unknown."""
    stats = storage.get_pool_stats(pool_name)
    if stats is None:
        names = [pool.name for pool in storage.list_pools()]
        known = f"pools: {', '.join(names)}" if names else "there are no pools"
        raise CommandError(f"no pool named {pool_name!r} ({known})")
    return stats


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Collection[int]
) -> str:
    """Columns padded to their widest cell; the columns in ``right`` right-aligned."""
    cells = [list(map(str, headers)), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def milliseconds(value: float | None) -> str:
    """A latency for a table: ``120 ms``, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.0f} ms"


def time_left(until: datetime | None) -> str:
    """What remains of a cooldown: ``45s``, ``3m 05s``, ``1h 02m``, or ``-``."""
    if until is None:
        return "-"
    seconds = int((until - utc_now()).total_seconds() + 0.999)
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def address_order(proxy: Proxy) -> tuple[str, str, int, str]:
    """Sort key: host, protocol, port, user."""
    protocol, host, port, user = proxy.endpoint_key
    return (host, protocol, port, user or "")


def proxies(number: int) -> str:
    """``1 proxy``, ``2 proxies``."""
    return f"{number} proxy" if number == 1 else f"{number} proxies"
