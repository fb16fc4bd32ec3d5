"""Telling when every proxy of a pool rests, and when the first one is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from .exceptions import PharoxError
from .models import PoolStatsSnapshot

logger = logging.getLogger("scrapy_pharox.keeper")

#: How often, at most, a pool that gives no lease is checked for "all cooling".
RESTING_CHECK_SECONDS = 5.0


class RestingPools:
    """Warns once when a pool's proxies all cool down, and says when it serves
    again; ``pool_stats`` reads a pool's counts."""

    def __init__(
        self, pool_stats: Callable[[str], Awaitable[PoolStatsSnapshot | None]]
    ) -> None:
        self._pool_stats = pool_stats
        self._resting: set[str] = set()
        self._checked: dict[str, float] = {}

    async def missed(self, pool_name: str) -> None:
        """An acquire of the pool found no proxy: is every one cooling down?

        Looked at most every few seconds per pool, and only while requests wait.
        """
        now = time.monotonic()
        if pool_name in self._resting or (
            now - self._checked.get(pool_name, -RESTING_CHECK_SECONDS)
            < RESTING_CHECK_SECONDS
        ):
            return
        self._checked[pool_name] = now
        try:
            snapshot = await self._pool_stats(pool_name)
        except PharoxError:
            return
        if snapshot and 0 < snapshot.active_proxies == snapshot.cooling_proxies:
            self._resting.add(pool_name)
            logger.warning(
                "Every proxy of pool %r is cooling down after bans or failures: "
                "requests wait for the first one to come back",
                pool_name,
            )

    def served(self, pool_name: str) -> None:
        """The pool gave a lease: back from its rest, if it was resting."""
        if pool_name in self._resting:
            self._resting.discard(pool_name)
            logger.info("A proxy of pool %r is back from its cooldown", pool_name)
