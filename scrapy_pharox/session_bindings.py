"""What a crawl's sessions ask of the storage, one session at a time: bind a key
to a proxy, renew its lease (saving its cookies), rotate it to a new generation,
park it at close; each with its errors told and its counts kept. ``Sessions``
(``sessions``) decides when; this does it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from .exceptions import PharoxError
from .session_cookies import jar_of
from .session_state import LocalSession

if TYPE_CHECKING:
    from .callers import AcquireRequest
    from .keeper import LeaseKeeper
    from .models import OutcomeReport
    from .models.sessions import ProxySession, SessionBinding

logger = logging.getLogger(__name__)

#: Why a generation ends; "identity": its proxy, a gateway's exit, got a new
#: session id (a new IP).
ROTATION_REASONS = ("ban", "max_uses", "max_age", "check", "failure", "identity")
_ROTATED_KEYS = {
    reason: f"pharox/session/rotated/{reason}" for reason in ROTATION_REASONS
}


class SessionBindings:
    """The storage side of one keeper's sessions."""

    def __init__(self, keeper: LeaseKeeper, lease_seconds: float) -> None:
        self._keeper = keeper
        self._config = keeper.config
        self._storage = keeper.manager.storage
        self._tally = keeper.tally
        self.lease_seconds = lease_seconds
        #: Sessions holding a lease slot now (``pharox/leases/active``).
        self.bound = 0

    async def bind(self, local: LocalSession, acquire: AcquireRequest) -> bool:
        """Bind the unbound session to a proxy; False when none is free now
        (or the storage failed: the caller waits)."""
        config = self._config
        try:
            bound = await self._keeper.caller.call(
                partial(
                    self._storage.bind_session,
                    local.pool,
                    local.key,
                    acquire.consumer,
                    self.lease_seconds,
                    config.session_max_age,
                    acquire.filters,
                    acquire.selector,
                    domain=acquire.domain,
                    join=False,  # a session another crawl uses now is busy
                )
            )
        except PharoxError as exc:
            self._tally.inc("pharox/acquire/error")
            logger.warning(
                "scrapy-pharox could not bind session %r: %s", local.key, exc
            )
            return False
        if bound is None:
            self._tally.inc("pharox/acquire/empty")
            return False
        if bound.expired:
            self._tally.inc("pharox/session/expired")
        self._tally.inc(
            "pharox/session/created"
            if bound.event == "created"
            else "pharox/session/resumed"
        )
        self.attach(local, bound)
        return True

    def attach(self, local: LocalSession, binding: SessionBinding) -> None:
        """``binding`` is the unbound session's now: it holds a slot again, and
        its jar holds the binding's cookies (none for a new generation)."""
        assert local.binding is None
        self.bound += 1
        self._tally.inc("pharox/acquire/leased")
        local.binding = binding
        local.jar = jar_of(binding.session.cookies)
        local.failures = 0
        local.renewed_at = time.monotonic()

    async def rotate(
        self,
        local: LocalSession,
        acquire: AcquireRequest,
        reason: str,
        report: OutcomeReport | None = None,
    ) -> SessionBinding | None:
        """End the bound session's generation (``reason`` in ROTATION_REASONS)
        and bind the key anew, with ``report`` on its old lease (a burned
        gateway exit is renewed instead); the new binding, or None."""
        binding = local.binding
        assert binding is not None
        keeper = self._keeper
        if report is not None and keeper.exits.burned(binding.lease, report):
            report = await keeper.exits.renew_burned(binding.lease, report)
        try:
            rotated = await keeper.caller.call(
                partial(
                    self._storage.rotate_session,
                    binding.session,
                    binding.lease,
                    acquire.consumer,
                    self.lease_seconds,
                    report,
                    acquire.filters,
                    acquire.selector,
                    domain=acquire.domain,
                    join=False,
                )
            )
        except PharoxError as exc:
            self._tally.inc("pharox/release/error")
            logger.warning(
                "scrapy-pharox could not rotate session %r: %s", local.key, exc
            )
            rotated = None
        self._tally.inc("pharox/session/rotated")
        self._tally.inc(_ROTATED_KEYS[reason])
        self._tally.inc(
            "pharox/release/exception"
            if reason == "failure"
            else "pharox/release/response"
        )
        self.bound -= 1
        local.binding = None
        if rotated is not None:
            self.attach(local, rotated)
        return rotated

    async def renew(
        self,
        local: LocalSession,
        cookies: list[dict[str, Any]] | None,
        *,
        used: bool = True,
    ) -> bool | None:
        """Renew the session's lease (and save cookies; ``used``: count a use);
        False, the session unbound, when its slot lapsed or another process
        moved it on; None when the storage failed (its lease holds until it
        expires: the caller tries again later)."""
        binding = local.binding
        assert binding is not None
        try:
            renewed = await self._keeper.caller.call(
                partial(
                    self._storage.renew_session,
                    binding.session,
                    binding.lease,
                    self.lease_seconds,
                    cookies,
                    used=used,
                )
            )
        except PharoxError as exc:
            logger.warning(
                "scrapy-pharox could not renew session %r: %s", local.key, exc
            )
            return None
        if local.binding is None or local.binding.lease.id != binding.lease.id:
            return renewed is not None  # it moved on meanwhile
        if renewed is None:
            self._tally.inc("pharox/release/closed")
            self.bound -= 1
            local.binding = None
            return False
        if renewed.lease_expires_at is not None:
            # In place, as the manager's extend_lease does: the requests out
            # on the lease (meta["pharox_lease"]) see its new expiry too.
            binding.lease.expires_at = renewed.lease_expires_at
        local.binding = _with_session(binding, renewed)
        local.renewed_at = time.monotonic()
        return True

    async def park_all(self, sessions: Iterable[LocalSession]) -> None:
        """Give every session's slot back, keeping the sessions in the storage."""
        for local in sessions:
            binding = local.binding
            if binding is None:
                continue
            local.binding = None
            self.bound -= 1
            self._tally.inc("pharox/release/closed")
            try:
                await self._keeper.caller.call(
                    self._storage.park_session, binding.session, binding.lease
                )
            except PharoxError as exc:
                self._keeper.close_problem(
                    f"session {local.key!r} not parked, its slot expires on its "
                    f"own ({exc})"
                )


def _with_session(binding: SessionBinding, session: ProxySession) -> SessionBinding:
    return replace(binding, session=session)
