"""Releases that failed, tried again off the per-request path.

When the storage cannot take a release (a database restarting, a cut wire), the
request has its response already and goes on; its lease would sit out its
whole duration. ``ReleaseRetries`` tries it again in the background, from half
a second and doubling up to ``MAX_DELAY_SECONDS``, until it goes through or the
lease has expired anyway. A release is fenced by lease id, so a try whose reply
was lost and a later try never free a slot twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scrapy.utils.defer import deferred_from_coro

from .bridge import call_later
from .exceptions import PharoxError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .callers import StorageCaller
    from .models import Lease, OutcomeReport
    from .tally import StatsTally

logger = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0


@dataclass
class _Pending:
    lease: Lease
    report: OutcomeReport | None
    delay: float
    cancel: Callable[[], None] | None = None


class ReleaseRetries:
    """Failed releases, each tried again until done or expired.

    ``released`` is called after a retry went through (the keeper wakes a
    request waiting for a proxy). Counts ``pharox/release/retried`` per try
    again, ``pharox/release/recovered`` for a release that went through late
    and ``pharox/release/expired`` for one whose lease expired first.
    """

    def __init__(
        self, caller: StorageCaller, tally: StatsTally, released: Callable[[], None]
    ) -> None:
        self._caller = caller
        self._tally = tally
        self._released = released
        self._pending: dict[int, _Pending] = {}
        self._closed = False

    def add(self, lease: Lease, report: OutcomeReport | None) -> None:
        """Try releasing ``lease`` again soon, until it goes through."""
        pending = _Pending(lease, report, FIRST_DELAY_SECONDS)
        self._pending[lease.id.int] = pending
        self._schedule(pending)

    def _schedule(self, pending: _Pending) -> None:
        if self._closed:  # a try that was out when the crawl ended: no more
            return

        def due() -> None:
            pending.cancel = None
            deferred_from_coro(self._try(pending)).addErrback(self._failed)

        pending.cancel = call_later(pending.delay, due)

    async def _try(self, pending: _Pending) -> None:
        lease = pending.lease
        if lease.expires_at.timestamp() <= time.time():
            # The storage reclaims it by itself now: nothing is held any more.
            self._pending.pop(lease.id.int, None)
            self._tally.inc("pharox/release/expired")
            return
        self._tally.inc("pharox/release/retried")
        try:
            if self._caller.inline:
                self._caller.release_now(lease, pending.report)
            else:
                await self._caller.release(lease, pending.report)
        except PharoxError as exc:
            pending.delay = min(pending.delay * 2, MAX_DELAY_SECONDS)
            logger.debug("a release tried again failed (%s); later again", exc)
            self._schedule(pending)
            return
        self._pending.pop(lease.id.int, None)
        self._tally.inc("pharox/release/recovered")
        logger.info("scrapy-pharox released a lease the storage had refused before")
        if not self._closed:
            self._released()

    def close(self) -> int:
        """Stop trying (the crawl is over); how many were left undone. A try
        out now still finishes, and is not followed by another."""
        self._closed = True
        pending, self._pending = list(self._pending.values()), {}
        for entry in pending:
            if entry.cancel is not None:
                entry.cancel()
        return len(pending)

    def _failed(self, failure: object) -> None:
        logger.error("scrapy-pharox could not retry a release: %s", failure)
