"""The Scrapy add-on: ``ADDONS = {"scrapy_pharox.Addon": 300}`` enables it all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .extension import PharoxStatsExtension
from .middleware import PharoxProxyMiddleware

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

MIDDLEWARE_PRIORITY = 740
EXTENSION_PRIORITY = 500


class Addon:
    """Puts the middleware at 740 and the stats extension at 500."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", PharoxProxyMiddleware, MIDDLEWARE_PRIORITY
        )
        settings.set_in_component_priority_dict(
            "EXTENSIONS", PharoxStatsExtension, EXTENSION_PRIORITY
        )
