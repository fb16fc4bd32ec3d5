"""The session part of the storage contract, which ``IStorage`` inherits: the
primitives an adapter implements (a row per session, written by compare and
set), and the session operations, composed once here of those and of leasing.

A session's row names the lease holding its slot; parked, it names none. Every
write is fenced by the stored generation, and a write that keeps the
generation (a resume, a renewal, a park) also by the stored lease, so two
processes that race on one key end with one binding and no lease left over:
each lease taken and not bound is given back, also when a step raises.
"""

from __future__ import annotations

import time
from dataclasses import replace
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from ..durations import check_seconds
from ..exceptions import InvalidArgumentError
from ..models import (
    Lease,
    OutcomeReport,
    ProxyFilters,
    ProxySession,
    SelectorStrategy,
    SessionBinding,
    check_session_key,
    cookies_to_json,
    lease_or_none,
)
from . import session_steps as steps
from .session_steps import Binder

if TYPE_CHECKING:
    from datetime import datetime

    from ..models import DomainCooldown, Paced, Proxy

#: How often a bind or an end tries again after another process changed the
#: session's row between its read and its write.
SESSION_ATTEMPTS: Final = 8


class SessionStorage:
    """Sessions: one key of a pool bound to one proxy and one lease slot on it.

    The primitives (``get_session`` to ``list_sessions``) raise
    InvalidArgumentError by default, so an adapter written before sessions
    keeps working without them; the operations (``bind_session`` on) need
    them. Session times (``created_at``, ``last_used_at``, ages) are
    ``session_clock()``'s; lease expiries are the storage's, as ever.
    """

    if TYPE_CHECKING:  # the leasing of IStorage, which the operations compose

        def acquire(
            self,
            pool_name: str,
            consumer_name: str,
            duration_seconds: float,
            filters: ProxyFilters | None = None,
            selector: SelectorStrategy | None = None,
            domain: str | None = None,
            *,
            reuse_delay: float = 0.0,
        ) -> Lease | Paced | None: ...

        def create_lease(
            self, proxy: Proxy, consumer_name: str, duration_seconds: float
        ) -> Lease: ...

        def extend_lease(
            self, lease: Lease, duration_seconds: float
        ) -> datetime | None: ...

        def release_lease(
            self, lease: Lease, report: OutcomeReport | None = None
        ) -> bool: ...

        def list_proxies(self, pool_name: str) -> list[Proxy]: ...

        def list_domain_cooldowns(self, pool_name: str) -> list[DomainCooldown]: ...

    # -- primitives -------------------------------------------------------------

    def get_session(self, pool_name: str, key: str) -> ProxySession | None:
        """Session ``key`` of the pool with its proxy joined, or None."""
        raise self._no_sessions()

    def put_session(
        self,
        session: ProxySession,
        expected_generation: int | None,
        *,
        expected_lease_id: UUID | EllipsisType | None = ...,
    ) -> bool:
        """Write the session's row by compare and set; True when written.

        With ``expected_generation`` None, insert it only if the pool has no
        row of that key; with a number, update it only if the stored
        generation is that one and, when ``expected_lease_id`` is given (None:
        parked), the stored row names that lease. ``proxy`` is not stored.
        PoolNotFoundError for an unknown pool, ProxyNotFoundError for a proxy
        not in it; InvalidArgumentError for cookies JSON cannot hold.
        """
        raise self._no_sessions()

    def delete_session(
        self, pool_name: str, key: str, generation: int | None = None
    ) -> bool:
        """Delete session ``key``'s row (only of ``generation``, when given);
        True when this call deleted it. Its lease is left alone."""
        raise self._no_sessions()

    def list_sessions(self, pool_name: str) -> list[ProxySession]:
        """The sessions of a pool by key (code point order), proxies joined."""
        raise self._no_sessions()

    def session_clock(self) -> float:
        """Now in epoch seconds, by the clock session times are kept in."""
        return time.time()

    def _no_sessions(self) -> InvalidArgumentError:
        return InvalidArgumentError(f"{type(self).__name__} has no sessions")

    # -- operations ---------------------------------------------------------------

    def bind_session(
        self,
        pool_name: str,
        key: str,
        consumer_name: str,
        idle_seconds: float,
        max_age_seconds: float,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        *,
        domain: str | None = None,
        join: bool = True,
    ) -> SessionBinding | None:
        """Session ``key`` with a live lease of ``idle_seconds`` on its proxy.

        With ``domain``, a proxy cooling down for it (a ban scoped to the
        domain) is neither resumed nor leased. With ``join=False``, a session
        whose stored lease has not expired (another crawl uses it) is busy:
        None, and nothing changes.

        A live lease of the session's is extended ("joined"); a parked or
        lapsed session leases its proxy again if it is ACTIVE, free and
        matches ``filters`` ("resumed", cookies and uses kept); otherwise, or
        for a new key, a new generation starts on an acquired proxy with no
        cookies ("created"). A session ``max_age_seconds`` old or older is
        ended first (``expired``). None when no proxy is free (nothing is
        written, nothing left leased), or after ``SESSION_ATTEMPTS`` races
        lost in a row.
        """
        check_session_key(key)
        idle = check_seconds(idle_seconds, "idle_seconds")
        max_age = check_seconds(max_age_seconds, "max_age_seconds")
        binder = Binder(
            self, pool_name, key, consumer_name, idle, filters, selector, domain, join
        )
        expired, generation = False, 1
        for _ in range(SESSION_ATTEMPTS):
            stored = self.get_session(pool_name, key)
            if stored is not None and steps.age(self, stored) >= max_age:
                if self.delete_session(pool_name, key, stored.generation):
                    steps.release_stored(self, stored)
                    # Numbers go on: a write of the ended one fails its fence.
                    expired, generation = True, stored.generation + 1
                continue
            if stored is None:
                bound = binder.new_generation(generation)
            else:
                bound = binder.bind_stored(stored)
            if not isinstance(bound, steps.Lost):
                return replace(bound, expired=expired) if bound else None
        return None

    def renew_session(
        self,
        session: ProxySession,
        lease: Lease,
        idle_seconds: float,
        cookies: list[dict[str, Any]] | None = None,
        *,
        used: bool = True,
    ) -> ProxySession | None:
        """The session after one more use: its lease extended by
        ``idle_seconds``, ``uses`` counted, ``last_used_at`` now, and its
        cookies replaced by ``cookies`` (None: the stored ones kept).

        None when the lease no longer holds its slot, or when the session's
        row moved on (another generation, another lease, ended): the lease,
        no longer the session's, is then released. Bind again.
        """
        idle = check_seconds(idle_seconds, "idle_seconds")
        if cookies is not None:
            cookies_to_json(cookies)  # refused before any I/O
        expires_at = self.extend_lease(lease, idle)
        if expires_at is None:
            return None
        stored = self.get_session(session.pool_name, session.key)
        if stored is not None and steps.holds(stored, session.generation, lease):
            renewed = stored.model_copy(
                update={
                    "uses": stored.uses + 1 if used else stored.uses,
                    "last_used_at": steps.now(self) if used else stored.last_used_at,
                    "consumer_id": lease.consumer_id,
                    "lease_expires_at": expires_at,
                    "cookies": stored.cookies if cookies is None else list(cookies),
                }
            )
            if self.put_session(renewed, stored.generation, expected_lease_id=lease.id):
                return renewed
        self.release_lease(lease)
        return None

    def rotate_session(
        self,
        session: ProxySession,
        lease: Lease,
        consumer_name: str,
        idle_seconds: float,
        report: OutcomeReport | None = None,
        filters: ProxyFilters | None = None,
        selector: SelectorStrategy | None = None,
        *,
        domain: str | None = None,
        join: bool = True,
    ) -> SessionBinding | None:
        """The session's next generation ("created"): another proxy, no
        cookies, no uses; ``domain`` and ``join`` as for ``bind_session``
        (without joining, a rotation another process won is None).

        With a ``report`` (a ban, a failure), ``lease`` is released with it
        first, so its cooldown keeps the proxy from being picked; without one
        it is released after the new lease is taken. The proxy left is taken
        again only when no other is free (an exclusive one once given back).
        When another process moved the session on first, its binding
        ("joined", or None when it has no live lease). None when no proxy is
        free: the session is ended.
        """
        idle = check_seconds(idle_seconds, "idle_seconds")
        pool_name, key = session.pool_name, session.key
        binder = Binder(
            self, pool_name, key, consumer_name, idle, filters, selector, domain, join
        )
        released = report is not None
        if released:
            self.release_lease(lease, report)
        new = binder.lease_another(lease.proxy_id)
        if new is None and not released:
            # No other proxy free: the one left, if exclusive, once given back.
            self.release_lease(lease)
            released = True
            new = lease_or_none(binder.acquire())
        if new is None:
            if self.delete_session(pool_name, key, session.generation) or not join:
                return None
            return steps.join(self, self.get_session(pool_name, key), idle)
        with steps.released_on_error(self, new):
            rotated = binder.first_session(session.generation + 1, new)
            written = self.put_session(
                rotated, session.generation, expected_lease_id=lease.id
            )
        if not released:
            self.release_lease(lease)
        if written:
            return SessionBinding(rotated, new, "created")
        self.release_lease(new)
        if not join:
            return None
        return steps.join(self, self.get_session(pool_name, key), idle)

    def park_session(self, session: ProxySession, lease: Lease) -> bool:
        """Give the session's lease back and keep its row, parked, for a later
        bind to resume; True when this call parked it."""
        self.release_lease(lease)
        stored = self.get_session(session.pool_name, session.key)
        if stored is None or not steps.holds(stored, session.generation, lease):
            return False
        parked = stored.model_copy(
            update={"lease_id": None, "consumer_id": None, "lease_expires_at": None}
        )
        return self.put_session(parked, stored.generation, expected_lease_id=lease.id)

    def end_session(self, pool_name: str, key: str) -> bool:
        """Delete session ``key`` and release its lease, if it has one; True
        when a row was deleted."""
        check_session_key(key)
        for _ in range(SESSION_ATTEMPTS):
            stored = self.get_session(pool_name, key)
            if stored is None:
                return False
            if self.delete_session(pool_name, key, stored.generation):
                steps.release_stored(self, stored)
                return True
        return False
