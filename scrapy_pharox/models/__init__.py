"""The leasing vocabulary: pydantic models and enums, validation only, no I/O."""

from __future__ import annotations

import random
from datetime import datetime
from enum import Enum
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from .base import Model, build_trusted, snapshot, utc_now
from .pools import (
    EARTH_RADIUS_KM,
    SCALAR_FILTER_FIELDS,
    ProxyFilters,
    ProxyPool,
    SelectorStrategy,
    haversine_km,
)
from .proxy import (
    Proxy,
    ProxyCredentials,
    ProxyProtocol,
    ProxyStatus,
    mask_url_password,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "LATENCY_SMOOTHING",
    "SCALAR_FILTER_FIELDS",
    "AcquireEventPayload",
    "CooldownPolicy",
    "DomainCooldown",
    "Lease",
    "LeaseOutcome",
    "LeaseStatus",
    "Model",
    "OutcomeReport",
    "PoolStatsSnapshot",
    "Proxy",
    "ProxyCredentials",
    "ProxyFilters",
    "ProxyPool",
    "ProxyProtocol",
    "ProxyStatus",
    "ReleaseEventPayload",
    "SelectorStrategy",
    "build_trusted",
    "haversine_km",
    "mask_url_password",
    "snapshot",
    "utc_now",
]


class LeaseStatus(str, Enum):
    """Whether a lease still holds its proxy slot."""

    ACTIVE = "active"
    RELEASED = "released"


class Lease(BaseModel):
    """A time-bounded claim of one slot of one proxy by one consumer."""

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


class LeaseOutcome(str, Enum):
    """How the work done with a lease went."""

    SUCCESS = "success"
    BAN = "ban"
    FAILURE = "failure"


#: Weight of the newest latency in a proxy's moving average.
LATENCY_SMOOTHING = 0.3


class CooldownPolicy(BaseModel):
    """How long a banned or failing proxy rests: ``base * 2**(strikes - 1)``,
    capped at ``max``, times a jitter factor in ``1 ± jitter``.

    Strikes are consecutive bans; for failures, consecutive failures beyond
    ``failures_before_cooldown - 1``. A success resets both.
    """

    model_config = ConfigDict(frozen=True)

    base_seconds: float = Field(default=60.0, gt=0)
    max_seconds: float = Field(default=3600.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    failures_before_cooldown: int = Field(default=3, ge=1)

    def seconds(self, strikes: int, draw: float) -> float:
        """The cooldown after ``strikes`` (>= 1), for a uniform ``draw`` in [0, 1]."""
        exponent = min(max(strikes, 1) - 1, 62)
        plain = min(self.max_seconds, self.base_seconds * 2.0**exponent)
        return plain * (1 + self.jitter * (2 * draw - 1))

    def strikes(self, outcome: LeaseOutcome, consecutive: int) -> int:
        """Strikes counted after ``consecutive`` bans or failures (0: no cooldown)."""
        if outcome is LeaseOutcome.BAN:
            return consecutive
        if outcome is LeaseOutcome.FAILURE:
            return max(0, consecutive - self.failures_before_cooldown + 1)
        return 0


class OutcomeReport(BaseModel):
    """What a lease's holder reports when it releases it.

    With ``domain`` set, a ban cools the proxy for that domain only; failures
    always count against the proxy. ``draw`` picks the jitter.
    """

    outcome: LeaseOutcome
    latency_ms: float | None = Field(default=None, ge=0)
    domain: str | None = None
    policy: CooldownPolicy = CooldownPolicy()
    draw: float = Field(default_factory=random.random, ge=0, le=1)


class DomainCooldown(BaseModel):
    """A proxy resting for one target domain only."""

    proxy_id: UUID
    domain: str
    consecutive_bans: int = Field(ge=0)
    cooldown_until: datetime | None = None


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
