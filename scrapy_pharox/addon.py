"""The Scrapy add-on: ``ADDONS = {"scrapy_pharox.Addon": 300}`` enables it all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .extension import PharoxStatsExtension
from .middleware import PharoxProxyMiddleware
from .session_middlewares import (
    PharoxSessionCookiesMiddleware,
    PharoxSessionSpiderMiddleware,
)

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

MIDDLEWARE_PRIORITY = 740
#: Before Scrapy's CookiesMiddleware (700): it must see session requests as such.
SESSION_COOKIES_PRIORITY = 690
SESSION_SPIDER_MIDDLEWARE_PRIORITY = 500
EXTENSION_PRIORITY = 500


class Addon:
    """Puts the middleware at 740, the sessions' cookie middleware at 690, the
    sessions' spider middleware at 500 and the stats extension at 500."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", PharoxProxyMiddleware, MIDDLEWARE_PRIORITY
        )
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES",
            PharoxSessionCookiesMiddleware,
            SESSION_COOKIES_PRIORITY,
        )
        settings.set_in_component_priority_dict(
            "SPIDER_MIDDLEWARES",
            PharoxSessionSpiderMiddleware,
            SESSION_SPIDER_MIDDLEWARE_PRIORITY,
        )
        settings.set_in_component_priority_dict(
            "EXTENSIONS", PharoxStatsExtension, EXTENSION_PRIORITY
        )
