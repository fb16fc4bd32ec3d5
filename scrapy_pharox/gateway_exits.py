"""Renewing the provider-gateway exits a crawl's leases land on, between requests.

An exit (a proxy with a session id, ``models.identities``) gets a new session
id, which is a new exit from the provider, instead of a cooldown: when it is
banned, or fails PHAROX_FAILURES_BEFORE_COOLDOWN times in a row (renewed before
its lease goes back, with the outcome left unreported: it was the old exit's);
and when a lease lands on it within the last tenth of its ``session_seconds``
(renewed before the request goes out, if that lease is its only one). The
storage's compare and set makes sure a fleet turns one exit into one new id.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from .exceptions import PharoxError
from .models import Lease, LeaseOutcome, OutcomeReport, Proxy, new_session_id

if TYPE_CHECKING:
    from .callers import StorageCaller
    from .storage import IStorage
    from .tally import StatsTally

logger = logging.getLogger(__name__)

#: Why an exit was renewed, each counted under ``pharox/identity/renewed/``.
RENEWAL_REASONS = ("ban", "failure", "expiry")
_KEYS = {reason: f"pharox/identity/renewed/{reason}" for reason in RENEWAL_REASONS}


class GatewayExits:
    """Renews exits for one crawler's keeper, and counts the renewals it made."""

    def __init__(
        self, storage: IStorage, caller: StorageCaller, tally: StatsTally
    ) -> None:
        self._storage, self._caller, self._tally = storage, caller, tally

    @staticmethod
    def session_of(lease: Lease) -> str | None:
        """The session id of the lease's exit (None: not an exit)."""
        return None if lease.proxy is None else lease.proxy.session_id

    @staticmethod
    def due(lease: Lease) -> bool:
        """The lease's proxy is an exit in the last tenth of its session."""
        proxy = lease.proxy
        if proxy is None or proxy.session_id is None:
            return False
        due_at = proxy.renewal_due_at
        return due_at is not None and due_at <= time.time()

    @staticmethod
    def burned(lease: Lease, report: OutcomeReport | None) -> bool:
        """The outcome would cool the lease's exit down: a ban, or the failure
        that reaches the policy's count (as the exit stood when leased)."""
        proxy = lease.proxy
        if report is None or proxy is None or proxy.session_id is None:
            return False
        if report.outcome is LeaseOutcome.BAN:
            return True
        return (
            report.outcome is LeaseOutcome.FAILURE
            and proxy.consecutive_failures + 1 >= report.policy.failures_before_cooldown
        )

    async def renew_due(
        self, lease: Lease, held: dict[int, Lease] | None = None
    ) -> Lease:
        """The lease, on its exit renewed when it is the exit's only lease (or
        with the exit's id as stored, when another renewed it meanwhile), put
        in ``held`` (the keeper's, by ``lease.id.int``) in place of the old."""
        proxy = await self._renew(lease, "expiry", max_leases=1)
        if proxy is None:
            return lease
        renewed = lease.model_copy(update={"proxy": proxy})
        if held is not None and lease.id.int in held:
            held[lease.id.int] = renewed
        return renewed

    async def renew_burned(
        self, lease: Lease, report: OutcomeReport
    ) -> OutcomeReport | None:
        """Renew the lease's burned exit; the report its release carries then:
        none (the outcome was the old exit's), or ``report`` when the storage
        failed (the exit cools down as any proxy would)."""
        reason = "ban" if report.outcome is LeaseOutcome.BAN else "failure"
        proxy = await self._renew(lease, reason, max_leases=None)
        return report if proxy is None else None

    def renew_burned_now(
        self, lease: Lease, report: OutcomeReport
    ) -> OutcomeReport | None:
        """``renew_burned`` for storage answering inline."""
        reason = "ban" if report.outcome is LeaseOutcome.BAN else "failure"
        old, new = self._ids(lease)
        try:
            proxy = self._storage.renew_identity(lease.proxy_id, old, new)
        except PharoxError as exc:
            self._failed(lease, exc)
            return report
        self._renewed(lease, proxy, new, reason)
        return None

    async def _renew(
        self, lease: Lease, reason: str, max_leases: int | None
    ) -> Proxy | None:
        old, new = self._ids(lease)
        renew = partial(
            self._storage.renew_identity,
            lease.proxy_id,
            old,
            new,
            max_leases=max_leases,
        )
        try:
            proxy = await self._caller.call(renew)
        except PharoxError as exc:
            self._failed(lease, exc)
            return None
        self._renewed(lease, proxy, new, reason)
        return proxy

    @staticmethod
    def _ids(lease: Lease) -> tuple[str, str]:
        assert lease.proxy is not None and lease.proxy.session_id is not None
        return lease.proxy.session_id, new_session_id()

    def _renewed(self, lease: Lease, proxy: Proxy, new: str, reason: str) -> None:
        if proxy.session_id != new:
            return  # another request, or process, renewed it first
        self._tally.inc("pharox/identity/renewed")
        self._tally.inc(_KEYS[reason])
        assert lease.proxy is not None
        logger.info(
            "scrapy-pharox renewed gateway exit %s (%s): session %s is now %s",
            proxy.identity,
            reason,
            lease.proxy.session_id,
            new,
        )

    def _failed(self, lease: Lease, exc: PharoxError) -> None:
        self._tally.inc("pharox/identity/error")
        assert lease.proxy is not None
        logger.warning(
            "scrapy-pharox could not renew gateway exit %s: %s",
            lease.proxy.identity,
            exc,
        )
