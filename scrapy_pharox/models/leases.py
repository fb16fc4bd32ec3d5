"""A lease of one proxy slot, and what the manager's acquire and release callbacks
receive about it (with a snapshot of the pool's counts)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, Field

from .base import utc_now
from .pools import ProxyFilters, SelectorStrategy
from .proxy import Proxy


class LeaseStatus(str, Enum):
    """Whether a lease still holds its proxy slot."""

    ACTIVE = "active"
    RELEASED = "released"


class Lease(BaseModel):
    """A time-bounded claim of one slot of one proxy by one consumer.

    Pickled (a JOBDIR queue, any serialization of ``request.meta``), a lease
    leaves its proxy's credentials behind: what is written to disk holds no
    password. The holder keeps the live lease, with them, in memory.
    """

    id: UUID = Field(default_factory=uuid4)
    proxy_id: UUID
    consumer_id: UUID
    pool_id: UUID | None = None
    pool_name: str | None = None
    status: LeaseStatus = LeaseStatus.ACTIVE
    acquired_at: datetime = Field(default_factory=utc_now)
    expires_at: datetime
    released_at: datetime | None = None
    proxy: Proxy | None = None

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        on_disk = self.model_dump(exclude={"proxy": {"credentials"}})
        return (_unpickled_lease, (on_disk,))


class Paced:
    """An acquire's miss with a reuse delay: free proxies exist, but each one
    was leased for the request's domain less than the delay ago.

    Falsy, as the None of an ordinary miss; ``seconds`` is how long until the
    first of them is out of its delay (by the storage's clock).
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Paced(seconds={self.seconds!r})"


def lease_or_none(result: Lease | Paced | None) -> Lease | None:
    """An acquire's result without the reason of a miss."""
    return result if isinstance(result, Lease) else None


def _unpickled_lease(fields: dict[str, Any]) -> Lease:
    """A lease read back from a pickle: without its proxy's credentials."""
    return Lease.model_validate(fields)


class PoolStatsSnapshot(BaseModel):
    """Counts of one pool at one moment."""

    pool_name: str
    total_proxies: int = Field(default=0, ge=0)
    active_proxies: int = Field(default=0, ge=0)
    available_proxies: int = Field(default=0, ge=0)
    leased_proxies: int = Field(default=0, ge=0)
    total_leases: int = Field(default=0, ge=0)
    cooling_proxies: int = Field(default=0, ge=0)
    banned_proxies: int = Field(default=0, ge=0)
    collected_at: datetime = Field(default_factory=utc_now)


class AcquireEventPayload(BaseModel):
    """What an acquire callback receives after each attempt, hit or miss."""

    lease: Lease | None
    pool_name: str
    consumer_name: str
    filters: ProxyFilters | None = None
    selector: SelectorStrategy = SelectorStrategy.FIRST_AVAILABLE
    started_at: datetime
    completed_at: datetime
    duration_ms: int = Field(ge=0)
    pool_stats: PoolStatsSnapshot | None = None


class ReleaseEventPayload(BaseModel):
    """What a release callback receives after a lease was given back."""

    lease: Lease
    pool_name: str | None = None
    released_at: datetime = Field(default_factory=utc_now)
    lease_duration_ms: int | None = Field(default=None, ge=0)
    pool_stats: PoolStatsSnapshot | None = None
