"""``scrapy pharox-set --pool NAME --proxy URL --status active|inactive``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from ..models import Proxy, ProxyStatus
from ._common import CommandError, PharoxCommand, require_pool

if TYPE_CHECKING:
    import argparse

    from ..storage import IStorage

STATUSES = {"active": ProxyStatus.ACTIVE, "inactive": ProxyStatus.INACTIVE}


class Command(PharoxCommand):
    name = "pharox-set"

    def syntax(self) -> str:
        return "--pool NAME --proxy URL --status active|inactive [--storage URL]"

    def short_desc(self) -> str:
        return "Take a proxy out of a scrapy-pharox pool, or put it back"

    def long_desc(self) -> str:
        return (
            "Set a proxy's status. inactive: no crawl leases it any more. active: "
            "crawls lease it again, its cooldowns end and its ban and failure "
            "streaks start over. The proxy is named by its URL; without a user and "
            "password it matches the one proxy at that address."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--pool", metavar="NAME", required=True, help="the pool")
        parser.add_argument(
            "--proxy", metavar="URL", required=True, help="the proxy, by its URL"
        )
        parser.add_argument(
            "--status", metavar="STATUS", required=True, help="active or inactive"
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        with self.failures():
            status = STATUSES.get(opts.status.strip().lower())
            if status is None:
                raise CommandError(
                    f"--status must be active or inactive, got {opts.status!r}"
                )
            with self.storage(opts) as storage:
                require_pool(storage, opts.pool)
                proxy = find_proxy(storage, opts.pool, opts.proxy)
                updated = storage.set_proxy_status(
                    proxy.id, status, reset_cooldown=status is ProxyStatus.ACTIVE
                )
            cleared = " (cooldowns cleared)" if status is ProxyStatus.ACTIVE else ""
            print(
                f"{updated.masked_url} in pool {opts.pool!r}: "
                f"{proxy.status.value} -> {updated.status.value}{cleared}"
            )


def find_proxy(storage: IStorage, pool_name: str, url: str) -> Proxy:
    """The pool's proxy at ``url``: same protocol, host, port and user; a URL
    without credentials also finds the only proxy at that address."""
    wanted = Proxy.from_url(url, pool_id=UUID(int=0))
    proxies = storage.list_proxies(pool_name)
    same = [proxy for proxy in proxies if proxy.endpoint_key == wanted.endpoint_key]
    if not same and wanted.credentials is None:
        address = wanted.endpoint_key[:3]
        same = [proxy for proxy in proxies if proxy.endpoint_key[:3] == address]
    if len(same) > 1:
        users = ", ".join(sorted(proxy.masked_url for proxy in same))
        raise CommandError(
            f"{wanted.masked_url} matches {len(same)} proxies of pool "
            f"{pool_name!r} ({users}): give the user too"
        )
    if not same:
        raise CommandError(f"no proxy {wanted.masked_url} in pool {pool_name!r}")
    return same[0]
