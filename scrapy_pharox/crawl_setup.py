"""Building a crawler's ``LeaseKeeper``: settings checked, storage opened,
proxies loaded, signals connected."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.misc import load_object

from .callers import Target
from .config import PharoxConfig, PharoxSettingError
from .durations import check_seconds
from .exceptions import PharoxError
from .live_lists import ListRefresher
from .manager import ProxyManager
from .models import ProxyPool, mask_url_password
from .storage import IStorage, open_storage
from .target_values import parse_filters, parse_selector

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler

    from .keeper import LeaseKeeper

# The keeper's messages, under the name they had before building moved here.
logger = logging.getLogger("scrapy_pharox.keeper")


def build_keeper(keeper_class: type[LeaseKeeper], crawler: Crawler) -> LeaseKeeper:
    """A keeper for the crawler; NotConfigured when PHAROX_ENABLED is false.

    A PharoxError (a bad setting, a storage that cannot be opened) stops the
    crawl: it is logged as one ERROR line, then raised to the crawl's caller.
    """
    try:
        return _build_keeper(keeper_class, crawler)
    except PharoxError as exc:
        logger.error("scrapy-pharox cannot start the crawl: %s", exc)
        _mark_told(exc)
        raise


def _mark_told(exc: PharoxError) -> None:
    """Keep asyncio from telling ``exc`` again, with its traceback.

    AsyncCrawlerRunner (what ``scrapy crawl`` runs) re-raises a start-up error
    out of the crawl's task, which nobody awaits: asyncio then logs it as "Task
    exception was never retrieved", some 30 lines. The task still fails, so the
    crawl still ends with exit code 1.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running: a Twisted reactor drives the crawl
        return
    if task is None:
        return

    def retrieve(done: asyncio.Task[Any]) -> None:
        if done.cancelled():
            return
        error = done.exception()  # retrieved: asyncio no longer tells it
        if error is not None and error is not exc:
            # Another error ended the task: asyncio's words for it are kept.
            done.get_loop().call_exception_handler(
                {
                    "message": "Task exception was never retrieved",
                    "exception": error,
                    "future": done,
                }
            )

    task.add_done_callback(retrieve)


def _build_keeper(keeper_class: type[LeaseKeeper], crawler: Crawler) -> LeaseKeeper:
    config = PharoxConfig.from_settings(crawler.settings)
    if not config.enabled:
        raise NotConfigured("PHAROX_ENABLED is false")
    assert crawler.stats is not None
    for name in config.unknown_settings:
        logger.warning("Unknown setting %s: scrapy-pharox ignores it", name)
    spider = crawler.spider
    spider_name = spider.name if spider is not None else "spider"
    default_target = _default_target(config, spider)
    consumer = config.consumer or f"{config.bot_name}:{spider_name}"
    # Opened last, once every setting and spider attribute is known good.
    storage = open_configured_storage(config)
    keeper = keeper_class(
        ProxyManager(storage), config, crawler.stats, consumer, default_target
    )
    try:
        load_proxies(keeper)
    except BaseException:
        keeper.shutdown()  # the crawl stops here: free the storage it opened
        raise
    crawler.signals.connect(keeper.spider_opened, signal=signals.spider_opened)
    crawler.signals.connect(keeper.spider_closed, signal=signals.spider_closed)
    refresher = ListRefresher.for_crawler(crawler, keeper)
    if refresher is not None:  # held by its signals: nothing else refers to it
        for handler, signal in (
            (refresher.start, signals.spider_opened),
            (refresher.stop, signals.spider_closed),
        ):
            crawler.signals.connect(handler, signal=signal, weak=False)
    crawler.signals.connect(keeper.shutdown, signal=signals.engine_stopped)
    return keeper


def _default_target(config: PharoxConfig, spider: Spider | None) -> Target:
    """The spider's pool, filters and selector: its attributes, else the settings."""
    return Target(
        pool=_spider_setting(spider, "pharox_pool", config.pool),
        filters=parse_filters(
            "spider attribute pharox_filters",
            _spider_setting(spider, "pharox_filters", config.filters),
        ),
        selector=parse_selector(
            "spider attribute pharox_selector",
            _spider_setting(spider, "pharox_selector", config.selector),
        ),
        reuse_delay=check_seconds(
            _spider_setting(spider, "pharox_reuse_delay", config.reuse_delay),
            "spider attribute pharox_reuse_delay",
            zero=True,
            error=PharoxSettingError,
        ),
    )


def load_proxies(keeper: LeaseKeeper) -> None:
    """Add PHAROX_PROXIES to storage; warn about pools that cannot serve."""
    # Runs once in from_crawler, before the crawl starts: blocking is fine here.
    config = keeper.config
    storage = keeper.manager.storage
    if config.proxies:
        pool = storage.add_pool(ProxyPool(name=config.pool))
        for proxy in config.proxies:
            storage.add_proxy(proxy.model_copy(update={"pool_id": pool.id}))
    for pool_name, proxy in config.gateway_exits:
        pool = storage.add_pool(ProxyPool(name=pool_name))
        storage.add_proxy(proxy.model_copy(update={"pool_id": pool.id}))
    for pool_name in sorted({config.pool, keeper.default_target.pool}):
        proxies = storage.list_proxies(pool_name)
        usable = [p for p in proxies if p.protocol in config.protocols]
        if not proxies:
            logger.warning(
                "Pool %r has no proxies yet: requests wait up to "
                "PHAROX_ACQUIRE_TIMEOUT (%ss) for one",
                pool_name,
                config.acquire_timeout,
            )
        elif len(usable) < len(proxies):
            skipped = sorted(
                {p.protocol.value for p in proxies}
                - {protocol.value for protocol in config.protocols}
            )
            logger.warning(
                "Pool %r holds %d proxies speaking %s, which the download "
                "handler cannot use (PHAROX_PROTOCOLS): they are never leased",
                pool_name,
                len(proxies) - len(usable),
                ", ".join(skipped),
            )
        logger.info(
            "scrapy-pharox: pool %r has %d usable proxies (storage %s)",
            pool_name,
            len(usable),
            storage.__class__.__name__,
        )


def open_configured_storage(config: PharoxConfig) -> IStorage:
    """PHAROX_STORAGE (an adapter, a factory or its import path), else the URL."""
    if config.storage is None:
        try:
            return open_storage(config.storage_url)
        except PharoxError as exc:
            raise PharoxSettingError(f"PHAROX_STORAGE_URL: {exc}") from None
    candidate = config.storage
    if isinstance(candidate, str) and "://" in candidate:
        raise PharoxSettingError(
            "PHAROX_STORAGE takes an IStorage, a factory of one or its import path, "
            f"got {mask_url_password(candidate)!r}: put a storage URL in "
            "PHAROX_STORAGE_URL"
        )
    if isinstance(candidate, str):
        try:
            candidate = load_object(candidate)
        except (ImportError, NameError, ValueError) as exc:
            raise PharoxSettingError(f"PHAROX_STORAGE: {exc}") from None
    if not isinstance(candidate, IStorage) and callable(candidate):
        candidate = candidate()
    if not isinstance(candidate, IStorage):
        raise PharoxSettingError(
            f"PHAROX_STORAGE must be an IStorage, a factory of one or its import "
            f"path, got {config.storage!r}"
        )
    return candidate


def _spider_setting(spider: Spider | None, name: str, default: Any) -> Any:
    value = getattr(spider, name, None) if spider is not None else None
    return default if value is None else value
