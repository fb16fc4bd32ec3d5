"""No lease held while a request waits for its download slot.

Scrapy's downloader middlewares run before a request enters its download slot,
so a request leased there and then kept in the slot's queue by DOWNLOAD_DELAY
(or AutoThrottle, or a DOWNLOAD_SLOTS delay) would hold its proxy for the whole
wait. ``SlotGate`` holds the request back before the lease instead, until its
slot would send it at once: nothing waiting in the slot's queue, no request of
ours on its way into it, and the slot's shortest delay (its delay less its
jitter) passed since it last sent. A polite crawl then holds about one lease per
slot, and requests waiting their turn hold nothing.

It reads the downloader's slots through the attributes Scrapy's own
AutoThrottle reads (``delay``, ``lastseen``, ``queue``); a slot without a delay
lets every request through at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .bridge import Wakeup
from .stopping import StopWaiting

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

#: How often a request held back looks at its slot again while the slot's queue
#: is busy (a delay that is known to end is waited for exactly).
LOOK_AGAIN_SECONDS = 0.05
#: The meta key of a request let through to lease, until it reaches its slot.
ENTERING_KEY = "_pharox_entering_slot"


class SlotGate:
    """Holds requests back, before their lease, until their slot would send."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._entering: dict[str, int] = {}  # slot key -> requests let through
        self._wakeup = Wakeup()
        self._stopping = False

    def slot_of(self, request: Request) -> tuple[str, Any] | None:
        """The request's slot key and slot, when the slot exists and delays."""
        engine = self.crawler.engine
        downloader = getattr(engine, "downloader", None)
        if downloader is None:
            return None
        key = downloader.get_slot_key(request)
        slot = downloader.slots.get(key)
        if slot is None or not slot.delay:
            return None
        return key, slot

    async def wait_turn(self, request: Request) -> None:
        """Return once the request's slot would send it at once, and count it
        as on its way into the slot (``entered`` ends that)."""
        found = self.slot_of(request)
        if found is None:
            return
        key, slot = found
        sleeper = object()
        while True:
            if self._stopping:
                raise StopWaiting  # handed back to the scheduler, holding nothing
            wait = self._wait_for(key, slot)
            if wait <= 0:
                break
            await self._wakeup.sleep(sleeper, wait)
        self._entering[key] = self._entering.get(key, 0) + 1
        request.meta[ENTERING_KEY] = key

    def entered(self, request: Request) -> None:
        """The request reached its slot, or will not: the next may go."""
        key = request.meta.pop(ENTERING_KEY, None)
        if key is None:
            return
        left = self._entering.get(key, 1) - 1
        if left > 0:
            self._entering[key] = left
        else:
            self._entering.pop(key, None)
        self._wakeup.wake_all()

    def stop_waiting(self) -> None:
        """The crawl stops: every request held back goes (StopWaiting), now."""
        self._stopping = True
        self._wakeup.wake_all()

    def _wait_for(self, key: str, slot: Any) -> float:
        """Seconds to wait before the slot would send one more request at once
        (0: now)."""
        if self._entering.get(key) or slot.queue or slot.latercall is not None:
            return LOOK_AGAIN_SECONDS
        # The slot's delay is drawn anew for each send, within its jitter.
        jitter = getattr(slot, "jitter", None)
        if jitter is None:  # an older Scrapy: randomize_delay, +-50%
            jitter = 0.5 if slot.randomize_delay else 0.0
        shortest = slot.delay * max(0.0, 1 - jitter)
        # Scrapy stamps lastseen with time.monotonic() (older ones with
        # time.time(), a number past 1e9: no machine is up 31 years).
        now = time.time() if slot.lastseen > 1e9 else time.monotonic()
        return float(slot.lastseen + shortest - now)
