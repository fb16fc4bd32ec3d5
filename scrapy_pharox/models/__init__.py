"""The leasing vocabulary: pydantic models and enums, validation only, no I/O.

Every name is importable from here; each lives in the module of what it is about:
``proxy`` (a proxy, its credentials and URL), ``urls`` (any URL's password
masked, and why it would be misread), ``pools`` (pools, selectors and
filters), ``leases`` (a lease and the callbacks' payloads), ``identities`` (a
gateway's exits), ``sessions`` (a key bound to a proxy and its cookies),
``outcomes`` (outcome reports and
cooldowns) and ``base`` (the clock and the trusted constructors).
"""

from __future__ import annotations

from .base import Model, build_trusted, new_id, snapshot, utc_now
from .identities import (
    DEFAULT_SESSION_SECONDS,
    SESSION_PLACEHOLDER,
    check_session_id,
    gateway_identities,
    new_session_id,
    renewed_credentials,
)
from .leases import (
    AcquireEventPayload,
    Lease,
    LeaseStatus,
    Paced,
    PoolStatsSnapshot,
    ReleaseEventPayload,
    lease_or_none,
)
from .outcomes import (
    LATENCY_SMOOTHING,
    CooldownPolicy,
    DomainCooldown,
    LeaseOutcome,
    OutcomeReport,
)
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
)
from .sessions import (
    MAX_SESSION_KEY_LENGTH,
    ProxySession,
    SessionBinding,
    check_session_key,
    cookies_from_json,
    cookies_to_json,
)
from .urls import credentials_problem, mask_url_password

__all__ = [
    "DEFAULT_SESSION_SECONDS",
    "EARTH_RADIUS_KM",
    "LATENCY_SMOOTHING",
    "MAX_SESSION_KEY_LENGTH",
    "SCALAR_FILTER_FIELDS",
    "SESSION_PLACEHOLDER",
    "AcquireEventPayload",
    "CooldownPolicy",
    "DomainCooldown",
    "Lease",
    "LeaseOutcome",
    "LeaseStatus",
    "Model",
    "OutcomeReport",
    "Paced",
    "PoolStatsSnapshot",
    "Proxy",
    "ProxyCredentials",
    "ProxyFilters",
    "ProxyPool",
    "ProxyProtocol",
    "ProxySession",
    "ProxyStatus",
    "ReleaseEventPayload",
    "SelectorStrategy",
    "SessionBinding",
    "build_trusted",
    "check_session_id",
    "check_session_key",
    "cookies_from_json",
    "cookies_to_json",
    "credentials_problem",
    "gateway_identities",
    "haversine_km",
    "lease_or_none",
    "mask_url_password",
    "new_id",
    "new_session_id",
    "renewed_credentials",
    "snapshot",
    "utc_now",
]
