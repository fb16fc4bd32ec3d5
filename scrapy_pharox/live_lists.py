"""Pools that follow a live proxy list while the crawl runs.

``PHAROX_PROXIES_URL`` is fetched at spider open and every
``PHAROX_PROXIES_REFRESH`` seconds through Scrapy's own downloader
(``engine.download_async``, the project's download handlers and middlewares;
``meta["proxy"] = None``, so no lease of ours carries it), and
``PHAROX_PROXIES_FILE`` is re-read on the same schedule when its mtime or size
changed. The pool then follows what they list (``IStorage.sync_source``),
under a claim in the storage, so on a shared database one fleet member
refreshes a pool at a time. A failed fetch keeps the last list: one WARNING
and ``pharox/source/error`` per failed refresh.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit
from uuid import uuid4

from scrapy import Request
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall
from w3lib.http import basic_auth_header

from .exceptions import PharoxError
from .models import ProxyPool, mask_url_password
from .proxy_file import file_signature, parse_proxy_list

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.internet.defer import Deferred

    from .keeper import LeaseKeeper
    from .models import Proxy

logger = logging.getLogger(__name__)

#: With ``PHAROX_PROXIES_REFRESH = 0``: how long the claim of the process that
#: fetched at its start keeps processes starting with it from fetching again.
START_CLAIM_SECONDS = 60.0
#: A claim lasts this many refresh periods: its holder renews it before it
#: expires, and another process takes over only from a holder gone quiet.
CLAIM_PERIODS = 1.5
SOURCE_KEYS = ("pharox/source/added", "pharox/source/removed", "pharox/source/error")

Download = Callable[[Request], Awaitable["Response"]]


class ListRefresher:
    """Keeps one keeper's pool in step with its live list."""

    def __init__(self, keeper: LeaseKeeper, download: Download, holder: str) -> None:
        config = keeper.config
        self.keeper, self._download, self.holder = keeper, download, holder
        self.pool = config.pool
        self.url, self.file, self.refresh = (
            config.proxies_url,
            config.proxies_file,
            config.proxies_refresh,
        )
        self._claim_seconds = (
            self.refresh * CLAIM_PERIODS if self.refresh else START_CLAIM_SECONDS
        )
        self._source = f"PHAROX_PROXIES_URL {mask_url_password(self.url or '')}"
        self._secrets = _secrets(self.url)
        self._url_proxies: list[Proxy] | None = None  # None: never fetched
        self._file_proxies: list[Proxy] | None = None
        self._file_signature: tuple[int, int] | None = None
        self._parsed: dict[str, tuple[str, list[Proxy]]] = {}  # label -> last
        self._task: LoopingCall | None = None
        self._first: Deferred[None] | None = None
        self._stopped = False
        for key in SOURCE_KEYS:
            keeper.stats.set_value(key, 0)

    @classmethod
    def for_crawler(cls, crawler: Crawler, keeper: LeaseKeeper) -> ListRefresher | None:
        """The refresher of the crawl, or None when no list is live."""
        config = keeper.config
        if config.proxies_url is None and not (
            config.proxies_file and config.proxies_refresh
        ):
            return None

        def download(request: Request) -> Awaitable[Response]:
            assert crawler.engine is not None
            return crawler.engine.download_async(request)

        holder = f"{keeper.consumer}@{socket.gethostname()}:{os.getpid()}"
        return cls(keeper, download, f"{holder}:{uuid4().hex[:8]}")

    def start(self) -> None:
        """Refresh now, then every PHAROX_PROXIES_REFRESH seconds (spider_opened)."""
        if self.refresh:
            self._task = LoopingCall(lambda: deferred_from_coro(self.refresh_now()))
            self._task.start(self.refresh, now=True)
        else:
            self._first = deferred_from_coro(self.refresh_now())

    def stop(self) -> None:
        """Refresh no more (spider_closed); a fetch under way is not told."""
        self._stopped = True
        if self._task is not None and self._task.running:
            self._task.stop()

    async def refresh_now(self) -> None:
        """One refresh: claim the pool, read its sources, sync it, count."""
        storage, caller = self.keeper.manager.storage, self.keeper.caller
        try:
            if not await caller.call(self._claim):
                return  # another fleet member refreshes the pool
            if self.file is not None:
                self._read_file(self.file)
            if self.url is not None:
                await self._fetch(self.url)
            if (self.file is not None and self._file_proxies is None) or (
                self.url is not None and self._url_proxies is None
            ):
                return  # a source never read: the pool stays as it is
            listed = [*(self._file_proxies or ()), *(self._url_proxies or ())]
            result = await caller.call(
                storage.sync_source, self.pool, self.holder, listed
            )
        except PharoxError as exc:
            self._failed("its list", f"the storage failed: {exc}")
            return
        tally = self.keeper.tally
        for _ in range(len(result.added) + len(result.returned)):
            tally.inc("pharox/source/added")
        for _ in result.removed:
            tally.inc("pharox/source/removed")
        if result.added or result.returned:
            self.keeper.wake_waiters()
        if result.added or result.returned or result.removed:
            logger.info(
                "Pool %r follows its list: %d added, %d back, %d taken out; %d listed",
                self.pool,
                len(result.added),
                len(result.returned),
                len(result.removed),
                len(listed),
            )

    def _claim(self) -> bool:
        storage = self.keeper.manager.storage
        storage.add_pool(ProxyPool(name=self.pool))
        return storage.claim_refresh(self.pool, self.holder, self._claim_seconds)

    def _read_file(self, path: str) -> None:
        signature = file_signature(path)
        if self._file_proxies is not None and signature == self._file_signature:
            return
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self._failed(f"PHAROX_PROXIES_FILE {path}", f"cannot read it ({reason})")
            return
        self._file_proxies = self._parse(text, f"PHAROX_PROXIES_FILE {path}")
        self._file_signature = signature

    async def _fetch(self, url: str) -> None:
        parts = urlsplit(url)
        # The credentials go in a header: Scrapy would log a URL holding them.
        netloc = parts.netloc.rpartition("@")[2]
        request = Request(
            urlunsplit(parts._replace(netloc=netloc)),
            meta={"proxy": None, "dont_retry": True},  # the next refresh retries
            dont_filter=True,
        )
        if parts.username is not None:
            request.headers["Authorization"] = basic_auth_header(
                unquote(parts.username), unquote(parts.password or "")
            )
        try:
            response = await self._download(request)
        except Exception as exc:  # a download error, whatever its kind
            self._failed(self._source, f"{type(exc).__name__}: {exc}")
            return
        if not 200 <= response.status < 300:
            self._failed(self._source, f"HTTP {response.status}")
            return
        try:
            text = response.body.decode("utf-8-sig")
        except UnicodeDecodeError:
            self._failed(self._source, "its body is not UTF-8 text")
            return
        proxies = self._parse(text, "PHAROX_PROXIES_URL")
        if not proxies:  # more likely a provider's hiccup than an empty pool
            self._failed(self._source, "it lists no proxy")
            return
        self._url_proxies = proxies

    def _parse(self, text: str, label: str) -> list[Proxy]:
        """The list's proxies; its bad lines told once per change of its text."""
        last = self._parsed.get(label)
        if last is not None and last[0] == text:
            return last[1]
        max_concurrency = self.keeper.config.proxy_max_concurrency
        proxies, problems = parse_proxy_list(text, label, max_concurrency)
        for problem in problems:
            logger.warning("%s: line skipped", problem)
        self._parsed[label] = (text, proxies)
        return proxies

    def _failed(self, source: str, reason: str) -> None:
        if self._stopped:  # the crawl closed under the fetch
            return
        self.keeper.tally.inc("pharox/source/error")
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        logger.warning(
            "Could not refresh pool %r from %s: %s; it keeps its last list",
            self.pool,
            source,
            reason,
        )


def _secrets(url: str | None) -> list[str]:
    """The list URL's password, as written and decoded, to scrub from errors."""
    password = urlsplit(url).password if url else None
    if not password:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True)
