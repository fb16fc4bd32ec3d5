"""``scrapy pharox-pools``: every pool with its counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import PharoxCommand, table

if TYPE_CHECKING:
    import argparse

HEADERS = ("pool", "total", "active", "leased", "cooling down", "banned")


class Command(PharoxCommand):
    name = "pharox-pools"

    def syntax(self) -> str:
        return "[--storage URL]"

    def short_desc(self) -> str:
        return "List the scrapy-pharox proxy pools with their counts"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        with self.failures(), self.storage(opts) as storage:
            rows = []
            for pool in storage.list_pools():
                stats = storage.get_pool_stats(pool.name)
                if stats is not None:
                    rows.append(
                        (
                            pool.name,
                            stats.total_proxies,
                            stats.active_proxies,
                            stats.leased_proxies,
                            stats.cooling_proxies,
                            stats.banned_proxies,
                        )
                    )
            if not rows:
                print("No pools yet: add proxies with scrapy pharox-import")
                return
            print(table(HEADERS, rows, right=range(1, len(HEADERS))))
