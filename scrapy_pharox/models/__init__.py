"""The leasing vocabulary: pydantic models and enums, validation only, no I/O."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..exceptions import InvalidProxyURLError

EARTH_RADIUS_KM = 6371.0088


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


Model = TypeVar("Model", bound=BaseModel)

_object_setattr = object.__setattr__


def build_trusted(cls: type[Model], values: dict[str, Any]) -> Model:
    """``cls.model_construct(**values)`` for known-good ``values`` that set every
    field: what the storage adapters build for each lease, at a fifth of the
    cost (``model_construct`` looks up each field's aliases and default).

    Only for the models here: none has private attributes, a post-init hook or
    extra fields (tests/test_models.py checks).
    """
    model = cls.__new__(cls)
    _object_setattr(model, "__dict__", values)
    _object_setattr(model, "__pydantic_fields_set__", set(values))
    _object_setattr(model, "__pydantic_extra__", None)
    _object_setattr(model, "__pydantic_private__", None)
    return model


def snapshot(model: Model) -> Model:
    """A shallow copy, like ``model.model_copy()``, built as ``build_trusted`` does."""
    return build_trusted(type(model), dict(model.__dict__))


class ProxyStatus(str, Enum):
    """Operational status of a proxy; only ACTIVE proxies are leased."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    SLOW = "slow"
    BANNED = "banned"


class ProxyProtocol(str, Enum):
    """The protocol a client speaks to the proxy."""

    HTTP = "http"
    HTTPS = "https"
    SOCKS4 = "socks4"
    SOCKS5 = "socks5"


class LeaseStatus(str, Enum):
    """Whether a lease still holds its proxy slot."""

    ACTIVE = "active"
    RELEASED = "released"


class SelectorStrategy(str, Enum):
    """How a storage picks among the eligible proxies of a pool."""

    FIRST_AVAILABLE = "first_available"
    LEAST_USED = "least_used"
    ROUND_ROBIN = "round_robin"


class ProxyCredentials(BaseModel):
    """User and password for a proxy; the password never shows in a repr."""

    user: str
    password: str = Field(repr=False)

    @field_validator("user", "password")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


def _normalise_country(value: str | None) -> str | None:
    return value.upper() if value is not None else None


class Proxy(BaseModel):
    """A proxy endpoint in a pool, with its location and lease capacity."""

    id: UUID = Field(default_factory=uuid4)
    host: str
    port: int = Field(ge=1, le=65535)
    protocol: ProxyProtocol = ProxyProtocol.HTTP
    pool_id: UUID
    status: ProxyStatus = ProxyStatus.ACTIVE
    checked_at: datetime = Field(default_factory=utc_now)
    credentials: ProxyCredentials | None = None
    source: str | None = None
    country: str | None = None
    city: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    isp: str | None = None
    asn: int | None = None
    max_concurrency: int | None = Field(default=None, gt=0)
    current_leases: int = Field(default=0, ge=0)
    # Health the storage keeps from reported outcomes, shared by every process.
    successes: int = Field(default=0, ge=0)
    bans: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    consecutive_bans: int = Field(default=0, ge=0)
    consecutive_failures: int = Field(default=0, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    cooldown_until: datetime | None = None

    @field_validator("host", mode="before")
    @classmethod
    def _host_text(cls, value: Any) -> str:
        host = str(value).strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(char in host for char in "/@ ?#"):
            raise ValueError(f"invalid host {host!r}")
        return host

    @field_validator("country")
    @classmethod
    def _upper_country(cls, value: str | None) -> str | None:
        return _normalise_country(value)

    @property
    def netloc_host(self) -> str:
        """The host as written in a URL: IPv6 literals (the only hosts with a colon)
        in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        """``scheme://user:password@host:port`` with the credentials percent-encoded."""
        auth = ""
        if self.credentials is not None:
            user = quote(self.credentials.user, safe="")
            password = quote(self.credentials.password, safe="")
            auth = f"{user}:{password}@"
        return f"{self.protocol.value}://{auth}{self.netloc_host}:{self.port}"

    @property
    def masked_url(self) -> str:
        """The URL safe for logs and stats: the password replaced by ``***``."""
        auth = ""
        if self.credentials is not None:
            auth = f"{quote(self.credentials.user, safe='')}:***@"
        return f"{self.protocol.value}://{auth}{self.netloc_host}:{self.port}"

    @property
    def address(self) -> str:
        """``scheme://host:port`` without any credentials."""
        return f"{self.protocol.value}://{self.netloc_host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, *, pool_id: UUID, **fields: Any) -> Proxy:
        """Parse ``scheme://[user:password@]host:port`` into a Proxy.

        A malformed URL raises ``InvalidProxyURLError`` naming it, password masked.
        """
        text = url.strip() if isinstance(url, str) else url
        if not isinstance(text, str) or not text:
            raise InvalidProxyURLError(f"invalid proxy URL {url!r}: empty")
        shown = mask_url_password(text)
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise InvalidProxyURLError(f"invalid proxy URL {shown!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in {protocol.value for protocol in ProxyProtocol}:
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: scheme must be one of "
                "http, https, socks4, socks5"
            )
        if not parts.hostname:
            raise InvalidProxyURLError(f"invalid proxy URL {shown!r}: no host")
        if port is None:
            raise InvalidProxyURLError(f"invalid proxy URL {shown!r}: no port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: a proxy URL has no path or query"
            )
        credentials = None
        if parts.username is not None or parts.password is not None:
            if not parts.username or not parts.password:
                raise InvalidProxyURLError(
                    f"invalid proxy URL {shown!r}: give both user and password"
                )
            credentials = ProxyCredentials(
                user=unquote(parts.username), password=unquote(parts.password)
            )
        try:
            return cls(
                host=parts.hostname,
                port=port,
                protocol=ProxyProtocol(scheme),
                pool_id=pool_id,
                credentials=credentials,
                **fields,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise InvalidProxyURLError(
                f"invalid proxy URL {shown!r}: {problems}"
            ) from None

    @property
    def endpoint_key(self) -> tuple[str, str, int, str | None]:
        """What makes two proxies of one pool the same: protocol, host, port, user."""
        user = self.credentials.user if self.credentials is not None else None
        return (self.protocol.value, self.host.lower(), self.port, user)

    @property
    def has_capacity(self) -> bool:
        """True while another lease fits under ``max_concurrency``."""
        return (
            self.max_concurrency is None or self.current_leases < self.max_concurrency
        )


def mask_url_password(url: str) -> str:
    """Replace the password of ``scheme://user:password@host`` with ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


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
        return _normalise_country(value)

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
