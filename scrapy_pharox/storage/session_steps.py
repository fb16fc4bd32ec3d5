"""The steps the session operations of ``SessionStorage`` take, over its
primitives and leasing: split from ``sessions`` for size; its rules hold (every
lease taken and not bound is given back, also when a step raises)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final
from uuid import UUID

from ..exceptions import ProxyUnavailableError
from ..models import (
    Lease,
    ProxyFilters,
    ProxySession,
    ProxyStatus,
    SelectorStrategy,
    SessionBinding,
    lease_or_none,
)

if TYPE_CHECKING:
    from ..models import Paced
    from .sessions import SessionStorage

#: How many more acquires a rotation takes, holding the ones before, while
#: they land on the proxy it leaves.
ROTATION_TRIES: Final = 3


class Lost:
    """A write that another process's write beat: read the row again."""


LOST: Final = Lost()


@dataclass(frozen=True)
class Binder:
    """Where a bind or a rotation leases: the storage, the key, the consumer,
    the lease's duration and how the proxy is picked."""

    storage: SessionStorage
    pool_name: str
    key: str
    consumer_name: str
    idle: float
    filters: ProxyFilters | None
    selector: SelectorStrategy | None
    #: The site the session's requests go to: a proxy cooling down for it
    #: (a ban scoped to the domain) is neither resumed nor leased.
    domain: str | None = None
    #: Whether a live lease of the session is joined (extended and shared);
    #: else the session is busy (None) while its lease lives.
    join: bool = True

    def bind_stored(self, stored: ProxySession) -> SessionBinding | Lost | None:
        """The stored session joined, resumed, or else its next generation."""
        storage = self.storage
        if not self.join:
            if in_use(storage, stored):
                return None
        else:
            joined = join(storage, stored, self.idle)
            if joined is not None:
                return joined
        # Lapsed: a lease past its expiry may still hold the slot; it is ours.
        release_stored(storage, stored)
        proxy = stored.proxy
        if (
            proxy is not None
            and proxy.status is ProxyStatus.ACTIVE
            and (self.filters is None or self.filters.matches(proxy))
            and proxy.id not in self.cooling_for_domain()
        ):
            try:
                lease = storage.create_lease(proxy, self.consumer_name, self.idle)
            except ProxyUnavailableError:
                pass
            else:
                with released_on_error(storage, lease):
                    resumed = stored.model_copy(
                        update={
                            "lease_id": lease.id,
                            "consumer_id": lease.consumer_id,
                            "lease_expires_at": lease.expires_at,
                            "proxy": lease.proxy,
                        }
                    )
                    written = put_over(storage, resumed, stored)
                if written:
                    return SessionBinding(resumed, lease, "resumed")
                storage.release_lease(lease)
                return LOST
        return self.new_generation(stored.generation + 1, stored)

    def new_generation(
        self, generation: int, previous: ProxySession | None = None
    ) -> SessionBinding | Lost | None:
        """Generation ``generation`` of the key on a proxy acquired now, over
        the row ``previous`` (None: where there is no row)."""
        lease = lease_or_none(self.acquire())
        if lease is None:
            return None
        with released_on_error(self.storage, lease):
            session = self.first_session(generation, lease)
            written = put_over(self.storage, session, previous)
        if written:
            return SessionBinding(session, lease, "created")
        self.storage.release_lease(lease)
        return LOST

    def lease_another(self, left: UUID) -> Lease | None:
        """A lease of a proxy other than ``left`` if one is free, else of it."""
        same: list[Lease] = []  # held, so the selector moves on; released after
        try:
            for _ in range(1 + ROTATION_TRIES):
                lease = lease_or_none(self.acquire())
                if lease is None or lease.proxy_id != left:
                    break
                same.append(lease)
            else:
                # A proxy without a concurrency limit may come back every time
                # (FIRST_AVAILABLE): look for another one down the list.
                lease = self.lease_listed(left)
            return lease if lease is not None or not same else same.pop(0)
        finally:
            for extra in same:
                self.storage.release_lease(extra)

    def lease_listed(self, left: UUID) -> Lease | None:
        """A lease of the first proxy of the pool's list, but ``left``, that
        takes one."""
        cooling = self.cooling_for_domain()
        for proxy in self.storage.list_proxies(self.pool_name):
            if (
                proxy.id == left
                or proxy.id in cooling
                or proxy.status is not ProxyStatus.ACTIVE
                or not proxy.has_capacity
                or (self.filters is not None and not self.filters.matches(proxy))
            ):
                continue
            try:
                return self.storage.create_lease(proxy, self.consumer_name, self.idle)
            except ProxyUnavailableError:
                continue
        return None

    def acquire(self) -> Lease | Paced | None:
        return self.storage.acquire(
            self.pool_name,
            self.consumer_name,
            self.idle,
            self.filters,
            self.selector,
            domain=self.domain,
        )

    def cooling_for_domain(self) -> set[UUID]:
        """The proxies of the pool cooling down for ``domain`` now."""
        if self.domain is None:
            return set()
        return {
            cooldown.proxy_id
            for cooldown in self.storage.list_domain_cooldowns(self.pool_name)
            if cooldown.domain == self.domain
        }

    def first_session(self, generation: int, lease: Lease) -> ProxySession:
        """A generation's session as it starts: on the lease's proxy, no
        cookies, no uses."""
        started = now(self.storage)
        return ProxySession(
            pool_name=self.pool_name,
            key=self.key,
            generation=generation,
            proxy_id=lease.proxy_id,
            lease_id=lease.id,
            consumer_id=lease.consumer_id,
            lease_expires_at=lease.expires_at,
            created_at=started,
            last_used_at=started,
            proxy=lease.proxy,
        )


def in_use(storage: SessionStorage, stored: ProxySession) -> bool:
    """Whether the stored row names a lease that has not expired yet (by the
    session clock): another crawl is using the session."""
    expires = stored.lease_expires_at
    return (
        stored.lease_id is not None
        and expires is not None
        and expires.timestamp() > storage.session_clock()
    )


def join(
    storage: SessionStorage, stored: ProxySession | None, idle: float
) -> SessionBinding | None:
    """The stored session with its lease extended, if it is live ("joined")."""
    lease = stored.stored_lease() if stored is not None else None
    if stored is None or lease is None:
        return None
    expires_at = storage.extend_lease(lease, idle)
    if expires_at is None:
        return None
    return SessionBinding(
        stored.model_copy(update={"lease_expires_at": expires_at}),
        lease.model_copy(update={"expires_at": expires_at}),
        "joined",
    )


def put_over(
    storage: SessionStorage, session: ProxySession, previous: ProxySession | None
) -> bool:
    """Write ``session`` where the row is still ``previous`` (None: none)."""
    if previous is None:
        return storage.put_session(session, None)
    return storage.put_session(
        session, previous.generation, expected_lease_id=previous.lease_id
    )


def holds(stored: ProxySession | None, generation: int, lease: Lease) -> bool:
    """Whether the stored row is of ``generation`` and names ``lease``."""
    return (
        stored is not None
        and stored.generation == generation
        and stored.lease_id == lease.id
    )


def release_stored(storage: SessionStorage, stored: ProxySession) -> None:
    """Release the lease the stored row names, if any (fenced: a lapsed one is
    no one's)."""
    lease = stored.stored_lease()
    if lease is not None:
        storage.release_lease(lease)


@contextmanager
def released_on_error(storage: SessionStorage, lease: Lease) -> Iterator[None]:
    """Give ``lease`` back if the block raises."""
    try:
        yield
    except BaseException:
        storage.release_lease(lease)
        raise


def now(storage: SessionStorage) -> datetime:
    """The session clock's now, as an aware UTC datetime."""
    return datetime.fromtimestamp(storage.session_clock(), timezone.utc)


def age(storage: SessionStorage, session: ProxySession) -> float:
    """Seconds since the session's generation began."""
    return storage.session_clock() - session.created_at.timestamp()
