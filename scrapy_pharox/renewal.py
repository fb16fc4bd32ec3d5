"""Renewing the leases of requests still downloading.

A lease expires ``PHAROX_LEASE_SECONDS`` after it was taken, so that a crawl
that dies gives its proxies back; a request may download for longer
(``DOWNLOAD_TIMEOUT``, ``meta["download_timeout"]``). The renewer looks at the
leases held every quarter of the lease duration and extends each that is past
half of it by another lease duration (``IStorage.extend_lease``, fenced as a
release is), so a slow request keeps its proxy to itself, however long it runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall

from .exceptions import PharoxError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from twisted.internet.defer import Deferred

    from .callers import StorageCaller
    from .models import Lease
    from .tally import StatsTally

logger = logging.getLogger(__name__)

#: The renewer looks at least this rarely, whatever the lease duration.
SHORTEST_SWEEP_SECONDS = 0.1


class LeaseRenewer:
    """Extends the held leases past half their duration, every quarter of it.

    ``held`` is the keeper's map of the leases out (read, never changed).
    Counts ``pharox/leases/renewed``, and ``pharox/leases/lost`` for a held
    lease the storage no longer had (it expired before its renewal: the slot
    may have served another request meanwhile).
    """

    def __init__(
        self,
        held: Mapping[int, Lease],
        caller: StorageCaller,
        lease_seconds: float,
        tally: StatsTally,
    ) -> None:
        self._held = held
        self._caller = caller
        self._seconds = lease_seconds
        self._tally = tally
        self._task: LoopingCall | None = None

    def start(self) -> None:
        """Look at the held leases from now on, until ``stop``."""
        if self._task is None:
            self._task = LoopingCall(self._sweep)
            every = max(self._seconds / 4, SHORTEST_SWEEP_SECONDS)
            self._task.start(every, now=False).addErrback(self._failed)

    def stop(self) -> None:
        if self._task is not None and self._task.running:
            self._task.stop()

    def _sweep(self) -> Deferred[None]:
        return deferred_from_coro(self.renew_due())

    async def renew_due(self) -> None:
        """Extend every held lease that has less than half its duration left."""
        cutoff = time.time() + self._seconds / 2
        due = [
            lease
            for lease in self._held.values()
            if lease.expires_at.timestamp() <= cutoff
        ]
        for lease in due:
            try:
                if self._caller.inline:
                    extended = self._caller.extend_now(lease, self._seconds)
                else:
                    extended = await self._caller.extend(lease, self._seconds)
            except PharoxError as exc:
                # Tried again at the next sweep, while it has time left.
                self._tally.inc("pharox/leases/renewal_error")
                logger.warning("scrapy-pharox could not renew a lease: %s", exc)
                continue
            if extended:
                self._tally.inc("pharox/leases/renewed")
            elif lease.id.int in self._held:  # not released meanwhile
                self._tally.inc("pharox/leases/lost")
                logger.warning(
                    "The lease of proxy %s expired while its request was still "
                    "downloading: another request may have used the proxy",
                    lease.proxy.masked_url if lease.proxy else lease.proxy_id,
                )

    def _failed(self, failure: object) -> None:
        logger.error("scrapy-pharox stopped renewing leases: %s", failure)
