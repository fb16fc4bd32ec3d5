"""scrapy-pharox: a leased proxy per Scrapy request, from a pool shared by a fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .addon import Addon
from .aio import (
    acquire_proxy_async,
    acquire_proxy_with_retry_async,
    release_proxy_async,
    with_lease_async,
    with_retrying_lease_async,
)
from .bootstrap import bootstrap_pool, bootstrap_proxy
from .config import HealthCheckConfig, PharoxConfig, PharoxSettingError
from .exceptions import (
    InvalidArgumentError,
    InvalidLeaseError,
    InvalidProxyURLError,
    PharoxError,
    PoolNotFoundError,
    ProxyNotFoundError,
    ProxyUnavailableError,
    StorageError,
    UnsupportedStorageURLError,
)
from .extension import PharoxStatsExtension
from .health import (
    CheckResult,
    CheckSummary,
    PharoxCheckSpider,
    run_health_check,
    start_health_check,
)
from .manager import ProxyManager
from .middleware import PharoxProxyMiddleware
from .models import (
    AcquireEventPayload,
    Consumer,
    CooldownPolicy,
    DomainCooldown,
    Lease,
    LeaseOutcome,
    LeaseStatus,
    OutcomeReport,
    PoolStatsSnapshot,
    Proxy,
    ProxyCredentials,
    ProxyFilters,
    ProxyPool,
    ProxyProtocol,
    ProxyStatus,
    ReleaseEventPayload,
    SelectorStrategy,
)
from .storage import InMemoryStorage, IStorage, open_storage

if TYPE_CHECKING:
    from .storage.sql import SqlStorage

__all__ = [
    "AcquireEventPayload",
    "Addon",
    "CheckResult",
    "CheckSummary",
    "Consumer",
    "CooldownPolicy",
    "DomainCooldown",
    "HealthCheckConfig",
    "IStorage",
    "InMemoryStorage",
    "InvalidArgumentError",
    "InvalidLeaseError",
    "InvalidProxyURLError",
    "Lease",
    "LeaseOutcome",
    "LeaseStatus",
    "OutcomeReport",
    "PharoxCheckSpider",
    "PharoxConfig",
    "PharoxError",
    "PharoxProxyMiddleware",
    "PharoxSettingError",
    "PharoxStatsExtension",
    "PoolNotFoundError",
    "PoolStatsSnapshot",
    "Proxy",
    "ProxyCredentials",
    "ProxyFilters",
    "ProxyManager",
    "ProxyNotFoundError",
    "ProxyPool",
    "ProxyProtocol",
    "ProxyStatus",
    "ProxyUnavailableError",
    "ReleaseEventPayload",
    "SelectorStrategy",
    "SqlStorage",
    "StorageError",
    "UnsupportedStorageURLError",
    "acquire_proxy_async",
    "acquire_proxy_with_retry_async",
    "bootstrap_pool",
    "bootstrap_proxy",
    "open_storage",
    "release_proxy_async",
    "run_health_check",
    "start_health_check",
    "with_lease_async",
    "with_retrying_lease_async",
]


def __getattr__(name: str) -> Any:
    if name == "SqlStorage":  # imports SQLAlchemy: only for those who ask
        from .storage.sql import SqlStorage

        return SqlStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
