"""``pharox/*`` counts added up in plain ints, handed to Scrapy's stats in batches.

Each call into a Scrapy stats collector goes through a deprecation shim that
costs more than the count itself, and a crawl counts several things per request.
The tally adds them up and hands them over at most ``FLUSH_SECONDS`` after the
first one, or at once on ``flush()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bridge import call_later

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.statscollectors import StatsCollector

#: How stale a ``pharox/*`` figure in Scrapy's stats can be while a crawl runs.
FLUSH_SECONDS = 1.0


class StatsTally:
    """Counters for one stats collector, flushed in one batch.

    ``gauges`` are read at each flush and set as they are then (the number of
    leases out right now, say).
    """

    def __init__(
        self, stats: StatsCollector, gauges: dict[str, Callable[[], Any]]
    ) -> None:
        self.stats = stats
        self._gauges = gauges
        self._pending: dict[str, int] = {}
        self._cancel_flush: Callable[[], None] | None = None

    def inc(self, key: str) -> None:
        """Add one to ``key``; Scrapy's stats see it by the next flush."""
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if self._cancel_flush is None:
            self._cancel_flush = call_later(FLUSH_SECONDS, self._flush_due)

    def flush(self) -> None:
        """Hand every pending count and the gauges to Scrapy's stats now."""
        if self._cancel_flush is not None:
            self._cancel_flush()
        self._flush_due()

    def _flush_due(self) -> None:
        self._cancel_flush = None
        pending, self._pending = self._pending, {}
        for key, count in pending.items():
            self.stats.inc_value(key, count)
        for key, read in self._gauges.items():
            self.stats.set_value(key, read())
