"""The leasing vocabulary: pydantic models and enums, validation only, no I/O."""

from __future__ import annotations

import math
import random
from datetime import datetime
from enum import Enum
from typing import Annotated
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .base import Model, build_trusted, snapshot, utc_now
from .proxy import (
    Proxy,
    ProxyCredentials,
    ProxyProtocol,
    ProxyStatus,
    mask_url_password,
    normalise_country,
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

EARTH_RADIUS_KM = 6371.0088


class LeaseStatus(str, Enum):
    """Whether a lease still holds its proxy slot."""

    ACTIVE = "active"
    RELEASED = "released"


class SelectorStrategy(str, Enum):
    """How a storage picks among the eligible proxies of a pool."""

    FIRST_AVAILABLE = "first_available"
    LEAST_USED = "least_used"
    ROUND_ROBIN = "round_robin"


class ProxyPool(BaseModel):
    """A named set of proxies that leases are taken from."""

    id: UUID = Field(default_factory=uuid4)
    name: str = Field(min_length=1)
    description: str | None = None


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


SCALAR_FILTER_FIELDS = ("protocol", "source", "country", "city", "isp", "asn")


class ProxyFilters(BaseModel):
    """Criteria a proxy must meet; nested with ``all_of``, ``any_of``, ``none_of``.

    A set field must equal the proxy's value (a proxy whose value is unknown does
    not match). ``latitude`` and ``longitude`` go together; with ``radius_km`` they
    select proxies within that great-circle distance, without it the exact point.
    """

    protocol: ProxyProtocol | None = None
    source: str | None = None
    country: str | None = None
    city: str | None = None
    isp: str | None = None
    asn: int | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    radius_km: Annotated[float | None, Field(gt=0)] = None
    all_of: list[ProxyFilters] | None = None
    any_of: list[ProxyFilters] | None = None
    none_of: list[ProxyFilters] | None = None

    model_config = ConfigDict(extra="forbid")

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return normalise_country(value)

    @model_validator(mode="after")
    def _geo_needs_both_coordinates(self) -> ProxyFilters:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude must be given together")
        if self.radius_km is not None and self.latitude is None:
            raise ValueError("radius_km needs latitude and longitude")
        return self

    def matches(self, proxy: Proxy) -> bool:
        """True when the proxy meets every criterion of this filter."""
        # Read from the instance dicts: this runs for each candidate proxy of
        # every acquire on memory, where attribute access was most of its cost.
        criteria, values = self.__dict__, proxy.__dict__
        for name in SCALAR_FILTER_FIELDS:
            wanted = criteria[name]
            if wanted is not None and values[name] != wanted:
                return False
        if self.latitude is not None and self.longitude is not None:
            if proxy.latitude is None or proxy.longitude is None:
                return False
            if self.radius_km is None:
                if not (
                    math.isclose(proxy.latitude, self.latitude, abs_tol=1e-6)
                    and math.isclose(proxy.longitude, self.longitude, abs_tol=1e-6)
                ):
                    return False
            elif (
                haversine_km(
                    self.latitude, self.longitude, proxy.latitude, proxy.longitude
                )
                > self.radius_km
            ):
                return False
        all_of, any_of, none_of = (
            criteria["all_of"],
            criteria["any_of"],
            criteria["none_of"],
        )
        if all_of:
            for child in all_of:
                if not child.matches(proxy):
                    return False
        if any_of:
            for child in any_of:
                if child.matches(proxy):
                    break
            else:
                return False
        if none_of:
            for child in none_of:
                if child.matches(proxy):
                    return False
        return True


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points, in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = (
        math.sin(dphi / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


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
