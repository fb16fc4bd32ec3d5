"""Where a lease comes from and which proxy it gets: pools, the selector strategy,
and filters with the great-circle distance their radius is measured in."""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .proxy import Proxy, ProxyProtocol, normalise_country


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


EARTH_RADIUS_KM = 6371.0088


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
