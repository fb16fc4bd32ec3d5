"""``scrapy pharox-proxies --pool NAME``: every proxy of a pool with its health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import (
    PharoxCommand,
    address_order,
    milliseconds,
    require_pool,
    table,
    time_left,
)

if TYPE_CHECKING:
    import argparse

HEADERS = (
    "proxy", "status", "leases", "successes", "bans", "failures", "latency",
    "cooldown left",
)  # fmt: skip


class Command(PharoxCommand):
    name = "pharox-proxies"

    def syntax(self) -> str:
        return "--pool NAME [--storage URL]"

    def short_desc(self) -> str:
        return "List the proxies of a scrapy-pharox pool with their health"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--pool", metavar="NAME", required=True, help="the pool")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        with self.failures(), self.storage(opts) as storage:
            require_pool(storage, opts.pool)
            proxies = sorted(storage.list_proxies(opts.pool), key=address_order)
            if not proxies:
                print(f"Pool {opts.pool!r} has no proxies")
                return
            rows = [
                (
                    proxy.masked_url,
                    proxy.status.value,
                    f"{proxy.current_leases}/{proxy.max_concurrency or '-'}",
                    proxy.successes,
                    proxy.bans,
                    proxy.failures,
                    milliseconds(proxy.latency_ms),
                    time_left(proxy.cooldown_until),
                )
                for proxy in proxies
            ]
            print(table(HEADERS, rows, right=range(2, len(HEADERS))))
            urls = {proxy.id: proxy.masked_url for proxy in proxies}
            resting = [
                (urls.get(rest.proxy_id, str(rest.proxy_id)), rest.domain,
                 rest.consecutive_bans, time_left(rest.cooldown_until))
                for rest in storage.list_domain_cooldowns(opts.pool)
            ]  # fmt: skip
            if resting:
                print("\nCooling down for one domain only:")
                print(
                    table(
                        ("proxy", "domain", "bans in a row", "cooldown left"),
                        resting,
                        right=(2, 3),
                    )
                )
