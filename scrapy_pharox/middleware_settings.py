"""What the downloader middleware reads from the crawl's settings once: whether
a download slot may delay, and whether a middleware after ours may answer with
a copy of a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object
from scrapy.utils.python import global_object_name

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: Scrapy's downloader middlewares after ours (750-900) that never answer a
#: request or a response with a request: none can copy one that went out.
NEVER_ANSWER_WITH_A_REQUEST = frozenset(
    {
        "scrapy.downloadermiddlewares.httpproxy.HttpProxyMiddleware",
        "scrapy.downloadermiddlewares.stats.DownloaderStats",
        "scrapy.downloadermiddlewares.httpcache.HttpCacheMiddleware",
    }
)


def answers_may_pass_us(settings: BaseSettings, ours: type) -> bool:
    """Whether a downloader middleware after ``ours`` may answer with a request
    (a copy of one that went out through a proxy): one enabled after it that is
    not one of Scrapy's that never do."""
    paths = build_component_list(settings.getwithbase("DOWNLOADER_MIDDLEWARES"))
    classes = [load_object(path) for path in paths]
    mine = [
        n
        for n, cls in enumerate(classes)
        if isinstance(cls, type) and issubclass(cls, ours)
    ]
    if not mine:  # ours built by hand (a test crawler, say): assume the worst
        return True
    return any(
        global_object_name(cls) not in NEVER_ANSWER_WITH_A_REQUEST
        for cls in classes[mine[0] + 1 :]
    )


def slots_may_delay(settings: BaseSettings) -> bool:
    """Whether a download slot of the crawl may have a delay: DOWNLOAD_DELAY,
    AutoThrottle, or a DOWNLOAD_SLOTS entry with one."""
    slots = settings.getdict("DOWNLOAD_SLOTS")
    return (
        settings.getfloat("DOWNLOAD_DELAY") > 0
        or settings.getbool("AUTOTHROTTLE_ENABLED")
        or any(isinstance(slot, dict) and slot.get("delay") for slot in slots.values())
    )
